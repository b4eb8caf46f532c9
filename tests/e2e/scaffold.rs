//! `balut new`: the crate it writes builds, passes its own tests and runs in a host without
//! edits, for both kinds; bad names and occupied folders are refused (exit 2).
//!
//! The generated crate is built with the workspace's `Cargo.lock` copied in and `--offline`,
//! into the workspace's target folder, so it reuses what the workspace built (abi_stable and
//! the rest) and needs no network: about 5 s per crate on 2 cores once the workspace is
//! built.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use balut_tests::{
    EXIT_TIMEOUT, Host, PluginDir, STATE_TIMEOUT, Signal, build, has_field, run_balut,
};
use serde_json::Value;

/// How long `balut new` may take.
const NEW_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace's target folder (where `build()` put everything).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| build().root.join("target"))
}

/// Runs `balut new NAME --kind KIND --path DIR` and checks it succeeded.
fn balut_new(name: &str, kind: &str, dir: &Path) {
    let done = run_balut(
        [
            OsString::from("new"),
            name.into(),
            "--kind".into(),
            kind.into(),
            "--path".into(),
            dir.into(),
        ],
        NEW_TIMEOUT,
    );
    assert!(done.status.success(), "balut new failed: {done:?}");
    assert!(
        done.stdout
            .contains(&format!("wrote a {kind} plugin `{name}`")),
        "{done:?}"
    );
    for file in ["Cargo.toml", "src/lib.rs", "README.md"] {
        assert!(dir.join(file).is_file(), "{file} is missing");
    }
}

/// Runs cargo in the generated crate, offline, into the workspace's target folder; returns
/// its stdout (panics with its output if it fails).
fn cargo(dir: &Path, args: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let started = Instant::now();
    let output = Command::new(&cargo)
        .current_dir(dir)
        .args(args)
        .arg("--offline")
        .env("CARGO_TARGET_DIR", target_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.to_string_lossy()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`cargo {}` in {} failed ({}):\n{stderr}\n{stdout}",
        args.join(" "),
        dir.display(),
        output.status
    );
    eprintln!(
        "[scaffold] cargo {} took {:?}",
        args.join(" "),
        started.elapsed()
    );
    stdout
}

/// Writes a plugin crate, tests and builds it; returns the built library.
fn generate_and_build(name: &str, kind: &str, dir: &Path) -> PathBuf {
    balut_new(name, kind, dir);
    // The workspace's versions, so everything resolves offline from what is cached.
    std::fs::copy(build().root.join("Cargo.lock"), dir.join("Cargo.lock"))
        .expect("copy the workspace's Cargo.lock");

    let tested = cargo(dir, &["test"]);
    assert!(tested.contains("test result: ok."), "{tested}");
    assert!(
        !tested.contains(" 0 passed"),
        "the template has tests: {tested}"
    );

    let built = cargo(dir, &["build", "--message-format=json-render-diagnostics"]);
    let lib_file = format!("lib{}.so", name.replace('-', "_"));
    let library = built
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .flat_map(|msg| msg["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|file| file.as_str().map(PathBuf::from))
        .find(|file| file.file_name().is_some_and(|f| f == lib_file.as_str()))
        .unwrap_or_else(|| panic!("cargo built no {lib_file}:\n{built}"));
    // What the host would check, then a scratch life cycle in a child process.
    let checked = run_balut(
        [
            std::ffi::OsStr::new("check"),
            library.as_os_str(),
            std::ffi::OsStr::new("--run"),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(
        checked.status.code(),
        Some(0),
        "balut check --run: {checked:?}"
    );
    library
}

/// Stops the host with SIGTERM and checks that the container stopped cleanly.
fn stop_cleanly(mut host: Host, name: &str) {
    host.signal(Signal::SIGTERM);
    let status = host.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "exit {status:?}\n{}", host.logs());
    assert!(
        host.lines()
            .iter()
            .any(|l| l.contains("stopped") && has_field(l, "container", name)),
        "{}",
        host.logs()
    );
}

/// A loopback address nothing listens on now.
fn free_addr() -> std::net::SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    probe.local_addr().expect("its address")
}

/// `GET /` on `addr`: the status line and the body.
fn get(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the service");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: e2e\r\n\r\n")
        .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

#[test]
fn a_new_service_builds_tests_and_serves_in_a_host() {
    let work = tempfile::tempdir().expect("temp folder");
    let name = "e2e-scaffold-svc";
    let lib = generate_and_build(name, "service", &work.path().join(name));

    // Without a config: it binds a port of its own and logs it.
    let dir = PluginDir::new();
    dir.copy_file(
        &lib,
        lib.file_name().and_then(|f| f.to_str()).expect("UTF-8"),
    );
    let host = Host::start(&dir);
    host.wait_state(name, "running", STATE_TIMEOUT);
    let response = get(host.echo_addr(name));
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.ends_with(&format!("hello from {name}\n")),
        "{response}"
    );
    stop_cleanly(host, name);

    // With a socket the host holds and a message of its own.
    let mut dir = PluginDir::new();
    dir.copy_file(
        &lib,
        lib.file_name().and_then(|f| f.to_str()).expect("UTF-8"),
    );
    let addr = free_addr();
    dir.write_config(&format!(
        "[containers.web]\nplugin = \"{name}\"\nconfig = {{ message = \"held\" }}\n\
         [containers.web.listen]\nhttp = \"{addr}\"\n"
    ));
    let host = Host::start(&dir);
    host.wait_state("web", "running", STATE_TIMEOUT);
    assert_eq!(host.echo_addr("web"), addr);
    let response = get(addr);
    assert!(response.ends_with("held\n"), "{response}");
    stop_cleanly(host, "web");
}

#[test]
fn a_new_worker_builds_tests_and_runs_in_a_host() {
    let work = tempfile::tempdir().expect("temp folder");
    let name = "e2e-scaffold-worker";
    let lib = generate_and_build(name, "worker", &work.path().join(name));

    let mut dir = PluginDir::new();
    dir.copy_file(
        &lib,
        lib.file_name().and_then(|f| f.to_str()).expect("UTF-8"),
    );
    dir.write_config(&format!(
        "[containers.jobs]\nplugin = \"{name}\"\nconfig = {{ interval_ms = 20 }}\n"
    ));
    let host = Host::start(&dir);
    host.wait_state("jobs", "running", STATE_TIMEOUT);
    host.wait_log_where("the third run", STATE_TIMEOUT, |l| {
        l.contains("tick") && has_field(l, "container", "jobs") && has_field(l, "run", "3")
    });
    assert_eq!(host.state("jobs"), "running");
    stop_cleanly(host, "jobs");
}

#[test]
fn bad_names_and_occupied_folders_are_refused_with_exit_2() {
    let work = tempfile::tempdir().expect("temp folder");
    for (name, why) in [
        ("Hello", "must start with a lowercase letter"),
        ("my plugin", "may only contain"),
        ("fn", "Rust keyword"),
    ] {
        let done = run_balut(
            [
                OsString::from("new"),
                name.into(),
                "--path".into(),
                work.path().join("x").into(),
            ],
            NEW_TIMEOUT,
        );
        assert_eq!(done.status.code(), Some(2), "{name}: {done:?}");
        assert!(done.stderr.contains(why), "{name}: {done:?}");
    }
    assert!(!work.path().join("x").exists(), "nothing written");

    std::fs::write(work.path().join("keep.txt"), "mine").expect("write");
    let done = run_balut(
        [
            OsString::from("new"),
            "hello".into(),
            "--path".into(),
            work.path().into(),
        ],
        NEW_TIMEOUT,
    );
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(done.stderr.contains("is not an empty folder"), "{done:?}");
    assert_eq!(
        std::fs::read_dir(work.path()).expect("list").count(),
        1,
        "nothing written beside keep.txt"
    );
}
