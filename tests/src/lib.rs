//! Harness for Balut's end-to-end tests (`tests/e2e`).
//!
//! - [`build()`] builds the host and every plugin and fixture once per test process and
//!   tells where the artifacts are.
//! - [`PluginDir`] is a throwaway folder with a `plugins/` sub-folder for the libraries under
//!   test, a place for a config file and a private `TMPDIR` for the host.
//! - [`Host`] runs `balut run` on such a folder, collects its log lines, talks to its HTTP
//!   API and signals it. Dropping a [`Host`] kills the process if it still runs.
//!
//! Timeouts in here only catch hangs: they are generous on purpose.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub use nix::sys::signal::Signal;

pub mod browser;

/// How long a host may take to print its API address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Generous bound for state changes that should take milliseconds.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a host may take to exit after a signal.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll interval of [`Host::wait_for`] and friends.
pub const POLL: Duration = Duration::from_millis(50);

/// The cargo packages the tests need, built together by [`build()`].
pub const PACKAGES: &[&str] = &[
    "balut",
    "balut-plugin-http-echo",
    "balut-plugin-ticker",
    "balut-plugin-chaos",
    "balut-fixture-wrong-interface",
    "balut-fixture-no-export",
    "balut-fixture-panic-new",
    "balut-fixture-layout-mismatch",
    "balut-fixture-broken-start",
    "balut-fixture-needs-db",
    "balut-fixture-traps",
    "balut-fixture-echo-broken",
    "balut-fixture-echo-state-v2",
];

/// A library built by [`build()`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lib {
    /// `plugins/http-echo`, plugin name `http-echo`.
    HttpEcho,
    /// `plugins/ticker`, plugin name `ticker`.
    Ticker,
    /// `plugins/chaos`, plugin name `chaos`.
    Chaos,
    /// A plugin declaring interface 2.0, plugin name `wrong-interface`.
    WrongInterface,
    /// A cdylib without the plugin exports.
    NoExport,
    /// A plugin whose constructor panics.
    PanicNew,
    /// A plugin whose root module layout does not match the host's.
    LayoutMismatch,
    /// A second "version" of the chaos plugin (plugin name `chaos`, version `9.9.9-broken`)
    /// whose `start` always fails with "fixture: this version cannot start".
    BrokenStart,
    /// Plugin `needs-db`, whose instances require a container named `db` by default.
    NeedsDb,
    /// Plugin `traps`, whose library initializer or finalizer hangs, crashes or exits as
    /// the host's `BALUT_TRAP` environment variable says.
    Traps,
    /// A "version" of http-echo (plugin name `http-echo`, version `9.9.9-broken`) whose
    /// `start` always fails with "fixture: this version of http-echo cannot start".
    EchoBroken,
    /// A "version" of http-echo (plugin name `http-echo`, version `2.0.0-state-v2`) whose
    /// constructor refuses state handed over in any format but 2 (http-echo hands over 1).
    EchoStateV2,
}

impl Lib {
    /// Every library, in a fixed order.
    pub const ALL: [Lib; 12] = [
        Lib::HttpEcho,
        Lib::Ticker,
        Lib::Chaos,
        Lib::WrongInterface,
        Lib::NoExport,
        Lib::PanicNew,
        Lib::LayoutMismatch,
        Lib::BrokenStart,
        Lib::NeedsDb,
        Lib::Traps,
        Lib::EchoBroken,
        Lib::EchoStateV2,
    ];

    /// The file name cargo gives the library.
    pub fn file_name(self) -> &'static str {
        match self {
            Lib::HttpEcho => "libhttp_echo.so",
            Lib::Ticker => "libticker.so",
            Lib::Chaos => "libchaos.so",
            Lib::WrongInterface => "libfixture_wrong_interface.so",
            Lib::NoExport => "libfixture_no_export.so",
            Lib::PanicNew => "libfixture_panic_new.so",
            Lib::LayoutMismatch => "libfixture_layout_mismatch.so",
            Lib::BrokenStart => "libfixture_broken_start.so",
            Lib::NeedsDb => "libfixture_needs_db.so",
            Lib::Traps => "libfixture_traps.so",
            Lib::EchoBroken => "libfixture_echo_broken.so",
            Lib::EchoStateV2 => "libfixture_echo_state_v2.so",
        }
    }
}

/// Where [`build()`] put things.
#[derive(Debug)]
pub struct Build {
    /// The workspace root.
    pub root: PathBuf,
    /// The `balut` binary.
    pub balut: PathBuf,
    libs: HashMap<Lib, PathBuf>,
}

impl Build {
    /// The path of a built library.
    pub fn lib(&self, lib: Lib) -> &Path {
        self.libs
            .get(&lib)
            .map(PathBuf::as_path)
            .expect("build() checked that every library was built")
    }

    /// A file of the static fixtures in `tests/fixtures/files`.
    pub fn fixture_file(&self, name: &str) -> PathBuf {
        let path = self.root.join("tests/fixtures/files").join(name);
        assert!(path.is_file(), "fixture file {} is missing", path.display());
        path
    }
}

/// Builds the host, the example plugins and the fixtures (debug profile) once per process.
///
/// Runs `cargo build -p ...` in the workspace root (cargo from `$CARGO`, else `cargo`) and
/// takes the artifact paths from cargo's JSON messages, so `CARGO_TARGET_DIR` and cargo config
/// are honoured. Panics with cargo's output when the build fails.
pub fn build() -> &'static Build {
    static BUILD: OnceLock<Build> = OnceLock::new();
    BUILD.get_or_init(run_cargo_build)
}

fn run_cargo_build() -> Build {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent folder")
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .arg("build")
        .arg("--message-format=json-render-diagnostics");
    for package in PACKAGES {
        cmd.arg("-p").arg(package);
    }
    let started = Instant::now();
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.to_string_lossy()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!(
            "`cargo build` for the e2e tests failed ({}):\n{stderr}\n{stdout}",
            output.status
        );
    }
    eprintln!("[harness] cargo build took {:?}", started.elapsed());

    let mut balut = None;
    let mut by_file_name: HashMap<String, PathBuf> = HashMap::new();
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if kinds.iter().any(|k| k == "bin") && msg["target"]["name"] == "balut" {
            balut = msg["executable"].as_str().map(PathBuf::from);
        }
        if kinds.iter().any(|k| k == "cdylib") {
            for file in msg["filenames"].as_array().into_iter().flatten() {
                let Some(file) = file.as_str() else { continue };
                let path = PathBuf::from(file);
                if let Some(name) = path.file_name().and_then(OsStr::to_str) {
                    by_file_name.insert(name.to_owned(), path.clone());
                }
            }
        }
    }
    let balut = balut.unwrap_or_else(|| panic!("cargo reported no `balut` binary:\n{stdout}"));
    let mut libs = HashMap::new();
    for lib in Lib::ALL {
        let path = by_file_name.get(lib.file_name()).unwrap_or_else(|| {
            panic!(
                "cargo built no {}; cdylibs built: {:?}",
                lib.file_name(),
                by_file_name.keys().collect::<Vec<_>>()
            )
        });
        libs.insert(lib, path.clone());
    }
    Build { root, balut, libs }
}

/// `libfixture_old_timer.so`: a plugin built against the frozen interface 1.0 API in
/// `tests/fixtures/old-api` (its own workspace, built once per test process into
/// `target/old-api`).
pub fn old_api_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_frozen("old-api", "libfixture_old_timer.so"))
}

/// `libfixture_timer_1_2.so`: a plugin built against the frozen interface 1.2 API in
/// `tests/fixtures/api-1.2` (built once per test process into `target/api-1.2`).
pub fn api_1_2_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_frozen("api-1.2", "libfixture_timer_1_2.so"))
}

/// Builds the fixture workspace `tests/fixtures/NAME` into `target/NAME`; the path of its
/// library `file`.
fn build_frozen(name: &str, file: &str) -> PathBuf {
    let root = &build().root;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join(name);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let output = Command::new(&cargo)
        .current_dir(root.join("tests/fixtures").join(name))
        .args(["build", "--target-dir"])
        .arg(&target)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.to_string_lossy()));
    if !output.status.success() {
        panic!(
            "building tests/fixtures/{name} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    target.join("debug").join(file)
}

/// A throwaway folder: `plugins/` (the plugin folder), `balut.toml` (config, when written),
/// `tmp/` (the host's `TMPDIR`) and whatever else a test puts there.
pub struct PluginDir {
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
    /// A folder on another file system (under /dev/shm), made on first use.
    other_fs: OnceLock<Option<tempfile::TempDir>>,
}

impl Default for PluginDir {
    fn default() -> Self {
        Self::new()
    }
}

impl PluginDir {
    /// An empty folder.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("balut-e2e-")
            .tempdir()
            .expect("create a temp folder");
        set_umask();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).expect("create plugins/");
        // The host refuses a group- or world-writable plugin folder (strict modes).
        set_mode(&plugins, 0o755);
        std::fs::create_dir(dir.path().join("tmp")).expect("create tmp/");
        Self {
            dir,
            config: None,
            other_fs: OnceLock::new(),
        }
    }

    /// A folder holding the given libraries under their usual file names.
    pub fn with(libs: &[Lib]) -> Self {
        let dir = Self::new();
        for &lib in libs {
            dir.add(lib);
        }
        dir
    }

    /// The temp folder itself.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The plugin folder passed as `--plugin-dir`.
    pub fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// The folder the host gets as `TMPDIR`.
    pub fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    /// Copies a built library into the plugin folder under its usual file name.
    pub fn add(&self, lib: Lib) -> PathBuf {
        self.add_as(lib, lib.file_name())
    }

    /// Copies a built library into the plugin folder as `file_name`.
    pub fn add_as(&self, lib: Lib, file_name: &str) -> PathBuf {
        self.copy_file(build().lib(lib), file_name)
    }

    /// Copies any file into the plugin folder as `file_name`.
    ///
    /// The copy is created with mode 0755 whatever the source's mode, so the host's strict
    /// modes never see it group- or world-writable.
    pub fn copy_file(&self, from: &Path, file_name: &str) -> PathBuf {
        let bytes = std::fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        self.write_file(file_name, &bytes)
    }

    /// Writes `bytes` into the plugin folder as `file_name` (opening that path, created with
    /// mode 0755 or truncated in place).
    pub fn write_file(&self, file_name: &str, bytes: &[u8]) -> PathBuf {
        let to = self.plugins().join(file_name);
        write_bytes(&to, bytes);
        to
    }

    /// Puts `bytes` into the plugin folder as `file_name` the way `how` says.
    pub fn put(&self, file_name: &str, bytes: &[u8], how: Put) -> PathBuf {
        let to = self.plugins().join(file_name);
        match how {
            Put::InPlace => write_bytes(&to, bytes),
            Put::Cp => {
                let staged = self.staging().join(file_name);
                write_bytes(&staged, bytes);
                run_command(Command::new("cp").arg(&staged).arg(&to));
            }
            Put::Rename => {
                let staged = self.staging().join(file_name);
                write_bytes(&staged, bytes);
                rename(&staged, &to);
            }
            Put::TempRename => {
                let temp = self.plugins().join(format!(".{file_name}.tmp"));
                write_bytes(&temp, bytes);
                rename(&temp, &to);
            }
            Put::MvOtherFs => {
                let other = self.other_fs().unwrap_or_else(|| {
                    panic!("no folder on another file system; check PluginDir::other_fs first")
                });
                let staged = other.join(file_name);
                write_bytes(&staged, bytes);
                run_command(Command::new("mv").arg(&staged).arg(&to));
            }
        }
        to
    }

    /// Deletes `file_name` from the plugin folder (`rm`).
    pub fn remove(&self, file_name: &str) {
        let path = self.plugins().join(file_name);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("rm {}: {e}", path.display()));
    }

    /// Moves `file_name` out of the plugin folder into `moved-out/` beside it (`mv` within
    /// one file system) and returns where it went.
    pub fn move_out(&self, file_name: &str) -> PathBuf {
        let out = self.dir.path().join("moved-out");
        std::fs::create_dir_all(&out).expect("create moved-out/");
        let to = out.join(file_name);
        rename(&self.plugins().join(file_name), &to);
        to
    }

    /// A folder beside the plugin folder, on the same file system, for files on their way in.
    pub fn staging(&self) -> PathBuf {
        let staging = self.dir.path().join("staging");
        std::fs::create_dir_all(&staging).expect("create staging/");
        staging
    }

    /// A private folder under /dev/shm, if /dev/shm exists and is another file system than
    /// the plugin folder's; `None` otherwise (tests that need it skip).
    pub fn other_fs(&self) -> Option<&Path> {
        self.other_fs
            .get_or_init(|| {
                let shm = Path::new("/dev/shm");
                let plugins_dev = std::fs::metadata(self.plugins()).ok()?.dev();
                if std::fs::metadata(shm).ok()?.dev() == plugins_dev {
                    return None;
                }
                tempfile::Builder::new()
                    .prefix("balut-e2e-")
                    .tempdir_in(shm)
                    .ok()
            })
            .as_ref()
            .map(tempfile::TempDir::path)
    }

    /// Writes `balut.toml` beside the plugin folder; [`Host::start`] passes it as `--config`.
    pub fn write_config(&mut self, toml: &str) -> PathBuf {
        let path = self.dir.path().join("balut.toml");
        std::fs::write(&path, toml).expect("write balut.toml");
        self.config = Some(path.clone());
        path
    }

    /// The config file, if one was written.
    pub fn config(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// The `balut run` arguments for this folder, without `--listen`.
    pub fn run_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> =
            vec!["run".into(), "--plugin-dir".into(), self.plugins().into()];
        if let Some(config) = &self.config {
            args.push("--config".into());
            args.push(config.into());
        }
        args
    }
}

/// How a test puts a file into the plugin folder; each makes different file-system events
/// (inotify: a `cp` gives Create then Close(Write); a `mv` within the file system only
/// Modify(Name(To)); a write-then-rename one Create on the target; `cp` over a file
/// Modify(Data) then Close(Write)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Put {
    /// Open the path itself (create, or truncate in place: same inode) and write.
    InPlace,
    /// The `cp` command, from a staging folder beside the plugin folder.
    Cp,
    /// Write in a staging folder beside the plugin folder, then rename into the plugin
    /// folder (`mv` within one file system: only a rename event arrives).
    Rename,
    /// Write `.NAME.tmp` inside the plugin folder, then rename it over `NAME`.
    TempRename,
    /// Write under /dev/shm, then the `mv` command into the plugin folder (`mv` from another
    /// file system). Only when [`PluginDir::other_fs`] is `Some`.
    MvOtherFs,
}

impl Put {
    /// Every way, in a fixed order.
    pub const ALL: [Put; 5] = [
        Put::InPlace,
        Put::Cp,
        Put::Rename,
        Put::TempRename,
        Put::MvOtherFs,
    ];
}

/// Sets this process's umask to 022 (once), so files and folders the tests create are never
/// group- or world-writable unless a test makes them so.
fn set_umask() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    });
}

/// Raises this process's soft open-file limit to at least `want` (up to its hard limit)
/// and tells whether it is that high now: tests that open many sockets check first.
pub fn raise_open_files(want: u64) -> bool {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return false;
    };
    if soft >= want {
        return true;
    }
    hard >= want && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok()
}

/// Sets the permission bits of `path` (`chmod`).
pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Writes `bytes` to `path`: opens it (created with mode 0755, or truncated in place) and
/// writes everything in one go.
pub fn write_bytes(path: &Path, bytes: &[u8]) {
    set_umask();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.write_all(bytes)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn rename(from: &Path, to: &Path) {
    std::fs::rename(from, to)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", from.display(), to.display()));
}

fn run_command(cmd: &mut Command) {
    let desc = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {desc}: {e}"));
    assert!(
        out.status.success(),
        "{desc} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The bytes of a built library (read once per process).
pub fn lib_bytes(lib: Lib) -> Arc<Vec<u8>> {
    static CACHE: OnceLock<Mutex<HashMap<Lib, Arc<Vec<u8>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(bytes) = cache.lock().expect("cache lock").get(&lib) {
        return bytes.clone();
    }
    let path = build().lib(lib);
    let bytes =
        Arc::new(std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())));
    cache.lock().expect("cache lock").insert(lib, bytes.clone());
    bytes
}

/// "Version `n`" of a built library: its bytes with a marker appended. Bytes after the end
/// of an ELF file do not change what it loads, only its content hash, so every `n` is a new
/// content of the same plugin (and none equals the built file).
pub fn versioned_bytes(lib: Lib, n: u64) -> Vec<u8> {
    let base = lib_bytes(lib);
    let mut bytes = Vec::with_capacity(base.len() + 64);
    bytes.extend_from_slice(&base);
    bytes.extend_from_slice(format!("\0balut-e2e version {n} of {lib:?}\0").as_bytes());
    bytes
}

/// The first 12 hex digits of the SHA-256 of `bytes`, as the host reports `sha256`.
pub fn sha12(bytes: &[u8]) -> String {
    let hex = format!("{:x}", Sha256::digest(bytes));
    hex[..12].to_owned()
}

/// [`sha12`] of a file's content.
pub fn file_sha12(path: &Path) -> String {
    sha12(&std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// TOML string literal for a path (basic string with escapes).
pub fn toml_str(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("a string serializes")
}

/// Removes ANSI escape sequences, in case the host colours its output after all.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a log line carries the field `key=value` (also `key="value"`), matching whole
/// values only: `container=a` does not match `container=ab`.
pub fn has_field(line: &str, key: &str, value: &str) -> bool {
    field_values(line, key).iter().any(|v| v == value)
}

/// Every value of `key=...` in a log line, quotes removed.
pub fn field_values(line: &str, key: &str) -> Vec<String> {
    let needle = format!("{key}=");
    let mut values = Vec::new();
    let mut from = 0;
    while let Some(pos) = line[from..].find(&needle) {
        let start = from + pos;
        from = start + needle.len();
        let before = line[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let rest = &line[from..];
        let value = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next(),
            None => rest
                .split(|c: char| c.is_whitespace() || c == ',' || c == '}')
                .next(),
        };
        let value = value.unwrap_or_default();
        values.push(value.to_owned());
    }
    values
}

/// What a finished `balut` command printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `balut ARGS` to completion (killing it and panicking after `timeout`).
pub fn run_balut<I, S>(args: I, timeout: Duration) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_balut_with(args, &[], timeout)
}

/// [`run_balut`] with extra environment variables.
pub fn run_balut_with<I, S>(args: I, env: &[(&str, &str)], timeout: Duration) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = balut_command();
    cmd.args(args);
    cmd.envs(env.iter().copied());
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let out = read_all(child.stdout.take().expect("stdout is piped"));
    let err = read_all(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "{desc} did not finish within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    eprintln!("[harness] {desc} -> {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    Finished {
        status,
        stdout,
        stderr,
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        strip_ansi(&String::from_utf8_lossy(&buf))
    })
}

fn balut_command() -> Command {
    let mut cmd = Command::new(&build().balut);
    balut_env(&mut cmd);
    cmd
}

/// The environment every host and client process of the tests gets.
fn balut_env(cmd: &mut Command) {
    // With RUST_BACKTRACE set, a plugin's panic leaves a read-only mapping of the plugin
    // behind after dlclose (std's symbol cache): tests that read /proc/<pid>/maps need it off.
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG_STYLE")
        .env_remove("RUST_BACKTRACE")
        // A token from the developer's shell would change what the API lets through.
        .env_remove("BALUT_TOKEN")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
}

/// One log line and the stream it came from.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub stream: &'static str,
    pub text: String,
}

/// A running `balut run`.
pub struct Host {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<LogLine>>>,
    readers: Vec<JoinHandle<()>>,
    agent: ureq::Agent,
    exit: Option<ExitStatus>,
}

impl Host {
    /// Runs the host on `dir` (with its config, if written) and waits for the API address.
    pub fn start(dir: &PluginDir) -> Host {
        Host::spawn(dir.run_args(), Some(dir.tmp()))
    }

    /// Runs `balut ARGS --listen 127.0.0.1:0` and waits for `http api listening addr=...`.
    /// `tmpdir`, if given, becomes the host's `TMPDIR`.
    pub fn spawn(args: Vec<OsString>, tmpdir: Option<PathBuf>) -> Host {
        Host::spawn_with(args, tmpdir, &[])
    }

    /// Runs the host on `dir` from another copy of the `balut` binary, at `binary`.
    pub fn start_from(binary: &Path, dir: &PluginDir) -> Host {
        let mut cmd = Command::new(binary);
        balut_env(&mut cmd);
        Host::spawn_command(cmd, dir.run_args(), Some(dir.tmp()), &[])
    }

    /// Runs the host on `dir` with extra environment variables.
    pub fn start_with_env(dir: &PluginDir, env: &[(&str, OsString)]) -> Host {
        Host::spawn_with_env(dir.run_args(), Some(dir.tmp()), env)
    }

    /// [`Host::spawn`] with extra environment variables (values as `OsString`).
    pub fn spawn_with_env(
        args: Vec<OsString>,
        tmpdir: Option<PathBuf>,
        env: &[(&str, OsString)],
    ) -> Host {
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    v.to_str().expect("environment values in tests are UTF-8"),
                )
            })
            .collect();
        Host::spawn_with(args, tmpdir, &env)
    }

    /// Runs the host on `dir` bound by file modes like any other user: when the tests run
    /// as root, the host runs without the capabilities that let root read and search any
    /// file (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, dropped by `setpriv` from util-linux).
    pub fn start_bound_by_file_modes(dir: &PluginDir) -> Host {
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--bounding-set", "-dac_override,-dac_read_search", "--"])
                .arg(&build().balut);
            cmd
        } else {
            Command::new(&build().balut)
        };
        balut_env(&mut cmd);
        Host::spawn_command(cmd, dir.run_args(), Some(dir.tmp()), &[])
    }

    /// Runs `balut ARGS` (and `--listen 127.0.0.1:0` unless `args` has one) under an
    /// open-file limit of `soft` (soft) and `hard` (hard), set by `prlimit` from util-linux.
    pub fn spawn_with_open_files(
        args: Vec<OsString>,
        tmpdir: Option<PathBuf>,
        soft: u64,
        hard: u64,
    ) -> Host {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={soft}:{hard}"))
            .arg("--")
            .arg(&build().balut);
        balut_env(&mut cmd);
        Host::spawn_command(cmd, args, tmpdir, &[])
    }

    /// [`Host::spawn`] with extra environment variables. `--listen 127.0.0.1:0` is added
    /// unless `args` has a `--listen` of its own.
    pub fn spawn_with(args: Vec<OsString>, tmpdir: Option<PathBuf>, env: &[(&str, &str)]) -> Host {
        Host::spawn_command(balut_command(), args, tmpdir, env)
    }

    fn spawn_command(
        mut cmd: Command,
        args: Vec<OsString>,
        tmpdir: Option<PathBuf>,
        env: &[(&str, &str)],
    ) -> Host {
        cmd.args(&args);
        if !args.iter().any(|a| a == "--listen") {
            cmd.arg("--listen").arg("127.0.0.1:0");
        }
        cmd.envs(env.iter().copied());
        if let Some(tmp) = tmpdir {
            cmd.env("TMPDIR", tmp);
        }
        let Spawned {
            child,
            lines,
            readers,
        } = spawn_collecting(cmd);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let mut host = Host {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            readers,
            agent,
            exit: None,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let found = host.lines().into_iter().find_map(|line| {
                if !line.contains("http api listening") {
                    return None;
                }
                // `--log-format json` writes `{"message":"http api listening","addr":...}`.
                if let Ok(json) = serde_json::from_str::<Value>(&line) {
                    return json["addr"].as_str().and_then(|a| a.parse().ok());
                }
                field_values(&line, "addr")
                    .first()
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            });
            if let Some(addr) = found {
                host.addr = addr;
                return host;
            }
            if let Some(status) = host.child.try_wait().expect("try_wait") {
                host.exit = Some(status);
                host.join_readers();
                panic!(
                    "balut exited ({status}) before its API listened; output:\n{}",
                    host.lines().join("\n")
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "balut printed no `http api listening addr=...` line within {STARTUP_TIMEOUT:?}; output:\n{}",
                    host.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// All log lines so far (stdout and stderr, in arrival order, ANSI removed).
    pub fn lines(&self) -> Vec<String> {
        self.log_lines().into_iter().map(|l| l.text).collect()
    }

    /// All log lines so far with their streams.
    pub fn log_lines(&self) -> Vec<LogLine> {
        self.lines.lock().expect("log lock").clone()
    }

    /// All log output so far as one string.
    pub fn logs(&self) -> String {
        self.lines().join("\n")
    }

    /// Log lines containing every one of `parts`.
    pub fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_where(&format!("a log line containing {needle:?}"), timeout, |l| {
            l.contains(needle)
        })
    }

    /// Waits for a log line that satisfies `pred` and returns it.
    pub fn wait_log_where(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> String {
        self.wait_until(what, timeout, |h| h.lines().into_iter().find(|l| pred(l)))
    }

    /// Polls `cond` every 50 ms until it holds; panics with the logs after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Host) -> bool) {
        self.wait_until(what, timeout, |h| cond(h).then_some(()))
    }

    /// Polls `f` every 50 ms until it returns `Some`; panics with the logs after `timeout`.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Host) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; host output:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Polls `f` every 50 ms until it returns `Ok`, for at most `timeout`, and returns its
    /// last result: unlike [`Host::wait_until`], the caller asserts on what was last seen
    /// (say the host's maps and its report) rather than on the logs.
    pub fn poll<T, E>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&Host) -> Result<T, E>,
    ) -> Result<T, E> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = f(self);
            if result.is_ok() || Instant::now() > deadline {
                return result;
            }
            std::thread::sleep(POLL);
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path` on the API: status and JSON body.
    pub fn get(&self, path: &str) -> (u16, Value) {
        let res = self.agent.get(&self.url(path)).call();
        self.json_response("GET", path, res)
    }

    /// GET `path` on the API, which must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path} answered {status}: {body}");
        body
    }

    /// POST `path` (empty body) on the API: status and JSON body.
    pub fn post(&self, path: &str) -> (u16, Value) {
        let res = self.agent.post(&self.url(path)).send_empty();
        self.json_response("POST", path, res)
    }

    /// POST `path` (empty body) with `Authorization: {authorization}` (none if `None`).
    pub fn post_with_auth(&self, path: &str, authorization: Option<&str>) -> (u16, Value) {
        let mut req = self.agent.post(&self.url(path));
        if let Some(value) = authorization {
            req = req.header("Authorization", value);
        }
        let res = req.send_empty();
        self.json_response("POST", path, res)
    }

    /// POST `path` (empty body) with `Authorization: Bearer {token}`.
    pub fn post_with_token(&self, path: &str, token: &str) -> (u16, Value) {
        self.post_with_auth(path, Some(&format!("Bearer {token}")))
    }

    /// Opens `GET /v1/events` (with `Last-Event-ID: last_event_id` if given) and waits for
    /// the response head, so every event published after this returns is delivered.
    pub fn events(&self, last_event_id: Option<u64>) -> EventStream {
        let id = last_event_id.map(|id| id.to_string());
        let headers: Vec<(&str, &str)> =
            id.iter().map(|id| ("Last-Event-ID", id.as_str())).collect();
        EventStream::open(self.addr, "/v1/events", &headers)
    }

    /// Opens `GET {path}` as an event stream (e.g. `/v1/events?since=3`).
    pub fn events_at(&self, path: &str) -> EventStream {
        EventStream::open(self.addr, path, &[])
    }

    /// GET `path` on the API: status, `Content-Type` and the body as text.
    pub fn get_text(&self, path: &str) -> (u16, String, String) {
        let mut res = self.agent.get(&self.url(path)).call().unwrap_or_else(|e| {
            panic!(
                "GET {path} on {} failed: {e}; host output:\n{}",
                self.addr,
                self.logs()
            )
        });
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = res
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("GET {path}: reading the body failed: {e}"));
        (status, content_type, text)
    }

    fn json_response(
        &self,
        method: &str,
        path: &str,
        res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> (u16, Value) {
        let mut res = res.unwrap_or_else(|e| {
            panic!(
                "{method} {path} on {} failed: {e}; host output:\n{}",
                self.addr,
                self.logs()
            )
        });
        let status = res.status().as_u16();
        let text = res
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("{method} {path}: reading the body failed: {e}"));
        let json = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {path} answered {status} with no JSON ({e}): {text:?}")
        });
        (status, json)
    }

    /// `GET /v1/containers` -> the `containers` array.
    pub fn containers(&self) -> Vec<Value> {
        let body = self.get_json("/v1/containers");
        body["containers"]
            .as_array()
            .unwrap_or_else(|| panic!("/v1/containers has no `containers` array: {body}"))
            .clone()
    }

    /// Container `name` from `GET /v1/containers`, if listed.
    pub fn find_container(&self, name: &str) -> Option<Value> {
        self.containers().into_iter().find(|c| c["name"] == name)
    }

    /// Container `name` from `GET /v1/containers`; panics if it is not listed.
    pub fn container(&self, name: &str) -> Value {
        self.find_container(name)
            .unwrap_or_else(|| panic!("container {name:?} is not listed: {:?}", self.containers()))
    }

    /// The state of container `name`.
    pub fn state(&self, name: &str) -> String {
        self.container(name)["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until container `name` is in `state` and returns its JSON.
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        self.wait_until(
            &format!("container {name:?} to be {state:?}"),
            timeout,
            |h| h.find_container(name).filter(|c| c["state"] == state),
        )
    }

    /// Waits until container `name` leaves "starting" and returns its JSON.
    pub fn wait_settled(&self, name: &str, timeout: Duration) -> Value {
        self.wait_until(
            &format!("container {name:?} to leave \"starting\""),
            timeout,
            |h| h.find_container(name).filter(|c| c["state"] != "starting"),
        )
    }

    /// `GET /v1/plugins` -> the `plugins` array.
    pub fn plugins(&self) -> Vec<Value> {
        let body = self.get_json("/v1/plugins");
        body["plugins"]
            .as_array()
            .unwrap_or_else(|| panic!("/v1/plugins has no `plugins` array: {body}"))
            .clone()
    }

    /// Plugin entry for `file_name` from `GET /v1/plugins`; panics if it is not listed.
    pub fn plugin(&self, file_name: &str) -> Value {
        let plugins = self.plugins();
        plugins
            .iter()
            .find(|p| p["file"] == file_name)
            .cloned()
            .unwrap_or_else(|| panic!("plugin file {file_name:?} is not listed: {plugins:?}"))
    }

    /// Plugin entry for `file_name` from `GET /v1/plugins`, if listed.
    pub fn find_plugin(&self, file_name: &str) -> Option<Value> {
        self.plugins().into_iter().find(|p| p["file"] == file_name)
    }

    /// Waits until the entry for `file_name` is listed and satisfies `pred`; returns it.
    pub fn wait_plugin(
        &self,
        file_name: &str,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        self.wait_until(
            &format!("plugin file {file_name:?} to be {what}"),
            timeout,
            |h| h.find_plugin(file_name).filter(|p| pred(p)),
        )
    }

    /// Waits until the entry for `file_name` has `status` (and returns it).
    pub fn wait_plugin_status(&self, file_name: &str, status: &str, timeout: Duration) -> Value {
        self.wait_plugin(file_name, &format!("{status:?}"), timeout, |p| {
            p["status"] == status
        })
    }

    /// Waits until `file_name` is no longer listed in `GET /v1/plugins`.
    pub fn wait_plugin_gone(&self, file_name: &str, timeout: Duration) {
        self.wait_for(
            &format!("plugin file {file_name:?} to leave /v1/plugins"),
            timeout,
            |h| h.find_plugin(file_name).is_none(),
        );
    }

    /// The host's folder of private copies: `private_dir=` of its `balut starting` line.
    pub fn private_dir(&self) -> PathBuf {
        let line = self.wait_log("balut starting", STARTUP_TIMEOUT);
        let dir = field_values(&line, "private_dir")
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no private_dir= on the `balut starting` line: {line}"));
        PathBuf::from(dir)
    }

    /// The file names in the private folder.
    pub fn private_copies(&self) -> BTreeSet<String> {
        let dir = self.private_dir();
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The file names of the private copies the host has mapped (from `/proc/<pid>/maps`,
    /// deleted files included).
    pub fn mapped_copies(&self) -> BTreeSet<String> {
        let dir = self.private_dir();
        let prefix = format!("{}/", dir.display());
        self.maps()
            .lines()
            .filter_map(|line| {
                let at = line.find(&prefix)?;
                let path = line[at + prefix.len()..].trim_end();
                let path = path.strip_suffix(" (deleted)").unwrap_or(path);
                Some(path.to_owned())
            })
            .collect()
    }

    /// How many log lines arrived so far: a mark for [`Host::lines_since`].
    pub fn mark(&self) -> usize {
        self.lines.lock().expect("log lock").len()
    }

    /// The log lines that arrived after `mark`.
    pub fn lines_since(&self, mark: usize) -> Vec<String> {
        self.lines().into_iter().skip(mark).collect()
    }

    /// Every address an http-echo container logged (`listening ... addr=...` with
    /// `container=NAME`), oldest first.
    pub fn echo_addrs(&self, container: &str) -> Vec<SocketAddr> {
        self.lines()
            .iter()
            .filter(|l| l.contains("listening") && !l.contains("http api listening"))
            .filter(|l| has_field(l, "container", container))
            .filter_map(|l| field_values(l, "addr").first().and_then(|a| a.parse().ok()))
            .collect()
    }

    /// The address an http-echo container logged (`listening ... addr=...` with
    /// `container=NAME`), waiting for it.
    pub fn echo_addr(&self, container: &str) -> SocketAddr {
        self.wait_until(
            &format!("http-echo container {container:?} to log its address"),
            STATE_TIMEOUT,
            |h| {
                h.lines().into_iter().find_map(|l| {
                    if !l.contains("listening") || l.contains("http api listening") {
                        return None;
                    }
                    if !has_field(&l, "container", container) {
                        return None;
                    }
                    field_values(&l, "addr")
                        .first()
                        .and_then(|a| a.parse().ok())
                })
            },
        )
    }

    /// Sends `signal` to the host.
    pub fn signal(&self, signal: Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("kill({pid}, {signal}): {e}"));
    }

    /// Waits for the host to exit; panics (and the drop kills it) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                self.join_readers();
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "balut did not exit within {timeout:?}; output:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait().expect("try_wait") {
            Some(status) => {
                self.exit = Some(status);
                false
            }
            None => true,
        }
    }

    /// `/proc/<pid>/maps` of the host.
    pub fn maps(&self) -> String {
        let path = format!("/proc/{}/maps", self.pid());
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.exit.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        self.join_readers();
    }
}

/// A started process whose stdout and stderr lines are being collected.
struct Spawned {
    child: Child,
    lines: Arc<Mutex<Vec<LogLine>>>,
    readers: Vec<JoinHandle<()>>,
}

/// Starts `cmd` with piped output and a reader thread per stream collecting its lines.
fn spawn_collecting(mut cmd: Command) -> Spawned {
    let desc = format!("{cmd:?}");
    eprintln!("[harness] spawn {desc}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let pid = child.id();
    let lines: Arc<Mutex<Vec<LogLine>>> = Arc::default();
    let readers = vec![
        collect_lines(
            child.stdout.take().expect("stdout is piped"),
            "stdout",
            pid,
            lines.clone(),
        ),
        collect_lines(
            child.stderr.take().expect("stderr is piped"),
            "stderr",
            pid,
            lines.clone(),
        ),
    ];
    Spawned {
        child,
        lines,
        readers,
    }
}

fn collect_lines(
    stream: impl Read + Send + 'static,
    name: &'static str,
    pid: u32,
    lines: Arc<Mutex<Vec<LogLine>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = strip_ansi(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']));
            eprintln!("[balut {pid} {name}] {text}");
            lines
                .lock()
                .expect("log lock")
                .push(LogLine { stream: name, text });
        }
    })
}

/// A plain HTTP GET to any address on this machine: status and body text.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let mut res = agent
        .get(&url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
    let status = res.status().as_u16();
    let body = res
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {url}: reading the body failed: {e}"));
    (status, body)
}

/// One Server-Sent Event as it came over the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The `id:` field, parsed.
    pub id: Option<u64>,
    /// The `event:` field.
    pub event: Option<String>,
    /// The `data:` lines, joined with newlines, parsed as JSON (`Null` if it is not JSON).
    pub data: Value,
    /// The raw `data:` text.
    pub raw: String,
}

impl SseEvent {
    /// The `id` of the data (panics if it has none).
    pub fn data_id(&self) -> u64 {
        self.data["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("event data without an id: {}", self.raw))
    }

    /// The data's `type`.
    pub fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or_default()
    }

    /// Whether this is a `state` event of `container`.
    pub fn is_state_of(&self, container: &str) -> bool {
        self.kind() == "state" && self.data["container"] == container
    }

    /// `(from, to)` of a `state` event.
    pub fn transition(&self) -> (String, String) {
        let text = |key: &str| self.data[key].as_str().unwrap_or_default().to_owned();
        (text("from"), text("to"))
    }
}

/// A plain HTTP/1.1 reader of an SSE endpoint over `std::net` (chunked or close-delimited
/// body), parsed on a thread into a channel. Dropping it (or [`EventStream::disconnect`])
/// closes the connection.
pub struct EventStream {
    socket: std::net::TcpStream,
    events: std::sync::mpsc::Receiver<SseEvent>,
    reader: Option<JoinHandle<()>>,
    /// The response status.
    pub status: u16,
    /// The response headers, names in lowercase.
    pub headers: Vec<(String, String)>,
}

impl EventStream {
    /// Connects, sends `GET {path}` with `headers`, reads the response head and starts
    /// reading events. Panics if the answer is not 200.
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> EventStream {
        let mut socket = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        socket
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("send GET {path}: {e}"));
        // Only against hangs while reading the head; the body is read without a timeout.
        socket
            .set_read_timeout(Some(STATE_TIMEOUT))
            .expect("set a read timeout");
        let mut reader = BufReader::new(socket.try_clone().expect("clone the socket"));
        let mut status_line = String::new();
        reader
            .read_line(&mut status_line)
            .unwrap_or_else(|e| panic!("GET {path}: reading the status line: {e}"));
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: bad status line {status_line:?}"));
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("GET {path}: reading the headers: {e}"));
            let line = line.trim_end();
            if n == 0 || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                head.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        assert_eq!(
            status, 200,
            "GET {path} answered {status_line:?}, headers {head:?}"
        );
        socket
            .set_read_timeout(None)
            .expect("clear the read timeout");
        let chunked = head
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
        let (tx, events) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let body: Box<dyn BufRead + Send> = if chunked {
                Box::new(BufReader::new(Chunked {
                    inner: reader,
                    left: 0,
                    done: false,
                }))
            } else {
                Box::new(reader)
            };
            parse_sse(body, &tx);
        });
        EventStream {
            socket,
            events,
            reader: Some(reader),
            status,
            headers: head,
        }
    }

    /// The value of response header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next event, or `None` if none came within `timeout` or the stream ended.
    pub fn next(&self, timeout: Duration) -> Option<SseEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Reads events until one satisfies `pred` (included), and returns them all; panics
    /// with what came if none did within `timeout`.
    pub fn until(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&SseEvent) -> bool,
    ) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    let done = pred(&event);
                    got.push(event);
                    if done {
                        return got;
                    }
                }
                Err(e) => panic!(
                    "no event {what} within {timeout:?} ({e}); got:\n{}",
                    got.iter()
                        .map(|e| e.raw.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    /// Every event that arrives within `quiet` of the previous one (none: empty).
    pub fn drain(&self, quiet: Duration) -> Vec<SseEvent> {
        std::iter::from_fn(|| self.next(quiet)).collect()
    }

    /// Closes the connection and waits for the reader to stop.
    pub fn disconnect(mut self) {
        self.close();
    }

    fn close(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.close();
    }
}

/// Decodes an HTTP/1.1 chunked body.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                self.done = true;
                return Ok(0);
            }
            let size = line.trim().split(';').next().unwrap_or_default();
            self.left = usize::from_str_radix(size, 16).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("chunk size {line:?}: {e}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            self.done = true;
            return Ok(0);
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = String::new();
            self.inner.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

/// Parses SSE from `body` until it ends, sending each dispatched event.
fn parse_sse(mut body: impl BufRead, tx: &std::sync::mpsc::Sender<SseEvent>) {
    let (mut id, mut event, mut data): (Option<u64>, Option<String>, Option<String>) =
        (None, None, None);
    let mut line = String::new();
    loop {
        line.clear();
        match body.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            if let Some(raw) = data.take() {
                let parsed = serde_json::from_str(&raw).unwrap_or(Value::Null);
                let sse = SseEvent {
                    id: id.take(),
                    event: event.take(),
                    data: parsed,
                    raw,
                };
                if tx.send(sse).is_err() {
                    return;
                }
            }
            id = None;
            event = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.parse().ok(),
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
}

/// A `balut` client command that runs until stopped (`balut events`, `status --watch`):
/// its output lines are collected; dropping it kills it.
pub struct BalutProcess {
    child: Child,
    lines: Arc<Mutex<Vec<LogLine>>>,
    readers: Vec<JoinHandle<()>>,
}

impl BalutProcess {
    /// Spawns `balut ARGS`.
    pub fn spawn<I, S>(args: I) -> BalutProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = balut_command();
        cmd.args(args);
        let Spawned {
            child,
            lines,
            readers,
        } = spawn_collecting(cmd);
        BalutProcess {
            child,
            lines,
            readers,
        }
    }

    /// The stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stream_lines("stdout")
    }

    /// The stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stream_lines("stderr")
    }

    fn stream_lines(&self, stream: &str) -> Vec<String> {
        self.lines
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text.clone())
            .collect()
    }

    /// Waits until the stdout lines satisfy `cond`; panics with the output after `timeout`.
    pub fn wait_stdout(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.stdout();
            if cond(&lines) {
                return lines;
            }
            let exited = self.child.try_wait().expect("try_wait");
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "waiting for {what}: {}; stdout:\n{}\nstderr:\n{}",
                    match exited {
                        Some(status) => format!("the command exited ({status})"),
                        None => format!("timed out after {timeout:?}"),
                    },
                    lines.join("\n"),
                    self.stderr().join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for BalutProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_match_whole_values() {
        let line =
            "2025-01-01T00:00:00Z  INFO balut: container stopped container=http-echo2 other=1";
        assert!(has_field(line, "container", "http-echo2"));
        assert!(!has_field(line, "container", "http-echo"));
        let quoted = r#"INFO x: listening container="echo" addr="127.0.0.1:4000""#;
        assert!(has_field(quoted, "container", "echo"));
        assert_eq!(field_values(quoted, "addr"), ["127.0.0.1:4000"]);
        let span = "INFO container{container=ticker}: balut: tick addr=127.0.0.1:5 x=1";
        assert!(has_field(span, "container", "ticker"));
        assert_eq!(field_values(span, "addr"), ["127.0.0.1:5"]);
        assert!(!has_field("subcontainer=ticker", "container", "ticker"));
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("\u{1b}[2mINFO\u{1b}[0m x"), "INFO x");
    }

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
