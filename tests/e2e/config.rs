//! Config files the host must refuse, and configs naming plugins that are not there.

use std::time::Duration;

use balut_tests::{EXIT_TIMEOUT, Finished, Host, Lib, PluginDir, STATE_TIMEOUT, Signal, run_balut};

use crate::echo_entry;

/// Runs `balut run` on `dir` with `config` and expects it to refuse the config at once.
pub(crate) fn refused(config: &str) -> Finished {
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    dir.write_config(config);
    let mut args = dir.run_args();
    args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    let out = run_balut(args, Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad config must exit with 2: {out:?}"
    );
    assert!(
        !out.stdout.contains("http api listening") && !out.stderr.contains("http api listening"),
        "the host started despite a bad config: {out:?}"
    );
    out
}

#[test]
fn unknown_top_level_key() {
    let out = refused(&format!("{}\nbogus = 1\n", echo_entry("http-echo", "x")));
    // echo_entry is 3 lines, then an empty line: `bogus` is on line 5.
    assert!(
        out.stderr.contains("unknown field `bogus`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("line 5"),
        "error should name line 5: {}",
        out.stderr
    );
}

#[test]
fn unknown_key_in_host_table() {
    let out = refused("[host]\nstop_timeout_ms = 100\nstop_timeout = 100\n");
    assert!(
        out.stderr.contains("unknown field `stop_timeout`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("line 3"), "{}", out.stderr);
}

#[test]
fn unknown_key_in_container_table() {
    let out = refused("[containers.web]\nplugin = \"http-echo\"\nplugn = \"http-echo\"\n");
    assert!(
        out.stderr.contains("unknown field `plugn`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("line 3"), "{}", out.stderr);
}

#[test]
fn bad_values() {
    let out = refused("[host]\n\nstart_timeout_ms = \"soon\"\n");
    assert!(out.stderr.contains("start_timeout_ms"), "{}", out.stderr);
    assert!(out.stderr.contains("line 3"), "{}", out.stderr);

    let out = refused("[containers.web]\nplugin = \"http-echo\"\nstop_timeout_ms = -5\n");
    assert!(out.stderr.contains("stop_timeout_ms"), "{}", out.stderr);
    assert!(out.stderr.contains("line 3"), "{}", out.stderr);

    let out = refused("[host]\nshutdown_timeout_ms = 0\n");
    assert!(out.stderr.contains("positive"), "{}", out.stderr);
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);

    let out = refused("[containers.web]\nplugin = 7\n");
    assert!(out.stderr.contains("plugin"), "{}", out.stderr);
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);
}

#[test]
fn not_toml_at_all() {
    let out = refused("[containers.web\nplugin = \"http-echo\"\n");
    assert!(out.stderr.contains("line 1"), "{}", out.stderr);
}

#[test]
fn container_for_a_plugin_that_is_not_there() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    dir.write_config(&format!(
        "{}[containers.ghost]\nplugin = \"ghost\"\n",
        echo_entry("http-echo", "x")
    ));
    let mut host = Host::start(&dir);
    host.wait_state("http-echo", "running", STATE_TIMEOUT);
    let ghost = host.wait_settled("ghost", STATE_TIMEOUT);
    assert_eq!(ghost["state"], "failed", "{ghost}");
    assert_eq!(ghost["plugin"], "ghost", "{ghost}");
    let error = ghost["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("ghost"),
        "last_error should name the missing plugin: {ghost}"
    );
    host.signal(Signal::SIGTERM);
    host.wait_exit(EXIT_TIMEOUT);
}

#[test]
fn plugin_config_the_plugin_rejects() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    dir.write_config(&format!(
        "{}[containers.picky]\nplugin = \"http-echo\"\nrestart = \"never\"\nconfig = {{ port = 0, colour = \"red\" }}\n",
        echo_entry("http-echo", "x")
    ));
    let mut host = Host::start(&dir);
    host.wait_state("http-echo", "running", STATE_TIMEOUT);
    let picky = host.wait_settled("picky", STATE_TIMEOUT);
    assert_eq!(picky["state"], "failed", "{picky}");
    let error = picky["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("colour"),
        "last_error should name the unknown key: {picky}"
    );
    host.signal(Signal::SIGTERM);
    host.wait_exit(EXIT_TIMEOUT);
}
