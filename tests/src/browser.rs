//! A real headless Chromium driven over WebDriver (`chromedriver` + `fantoccini`), for the
//! web console's browser tests (`tests/e2e/console.rs`) and its benchmark (`balut-bench
//! console`).
//!
//! [`Browser::start`] runs `chromedriver` on a free loopback port, opens a session of a
//! headless Chromium with a fresh profile, a 1280x800 viewport and the browser log enabled, and offers blocking
//! calls (it owns a small tokio runtime). Dropping it closes the session and ends the driver
//! (and the browser with it), also when a test panics.
//!
//! Waits poll the page every [`POLL`] up to [`STATE_TIMEOUT`] and panic with what was
//! awaited and what was seen last.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::{POLL, STATE_TIMEOUT};

/// The Debian packages that provide the browser and its driver.
pub const INSTALL_HINT: &str = "install Chromium and its WebDriver: `apt-get install -y chromium chromium-driver` \
     (Debian packages; /usr/bin/chromium and /usr/bin/chromedriver), or point \
     BALUT_CHROMIUM and BALUT_CHROMEDRIVER at them";

/// How long chromedriver may take to answer `/status`, and a session to open.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(60);

/// Special keys (WebDriver key codes) for [`Browser::press`].
pub mod key {
    /// Tab.
    pub const TAB: char = '\u{E004}';
    /// Enter.
    pub const ENTER: char = '\u{E007}';
    /// Escape.
    pub const ESCAPE: char = '\u{E00C}';
    /// Shift (held with [`super::Browser::press_with_shift`]).
    pub const SHIFT: char = '\u{E008}';
}

/// One entry of the browser's console log (chromedriver's `browser` log).
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    /// The message as chromedriver gives it (source URL, position, text).
    pub message: String,
    /// `console-api`, `network`, `javascript`, ...
    pub source: String,
}

impl LogEntry {
    /// Whether this is an error (`SEVERE`).
    pub fn is_severe(&self) -> bool {
        self.level == "SEVERE"
    }
}

/// A headless Chromium session.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    /// The browser's profile folder, removed on drop.
    _profile: tempfile::TempDir,
    /// Every browser log entry read so far (the log endpoint hands each entry out once).
    log: Vec<LogEntry>,
}

/// Where the browser and the driver are: `BALUT_CHROMIUM` / `BALUT_CHROMEDRIVER`, else the
/// Debian paths. Panics with what to install when either is missing.
pub fn binaries() -> (PathBuf, PathBuf) {
    let find = |var: &str, default: &str| {
        let path = std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default));
        if !path.is_file() {
            panic!(
                "the browser tests need {} ({} is missing): {INSTALL_HINT}",
                default.rsplit('/').next().unwrap_or(default),
                path.display()
            );
        }
        path
    };
    (
        find("BALUT_CHROMIUM", "/usr/bin/chromium"),
        find("BALUT_CHROMEDRIVER", "/usr/bin/chromedriver"),
    )
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (1280x800). Panics with what to
    /// install when Chromium or chromedriver is missing, and with the driver's output when
    /// it does not come up.
    pub fn start() -> Browser {
        let (chromium, chromedriver) = binaries();
        let port = free_port();
        let log_path = std::env::temp_dir().join(format!("balut-chromedriver-{port}.log"));
        let mut driver = Command::new(&chromedriver);
        driver
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A process group of its own: dropping the browser ends the driver and every
            // browser process it started, even when the session could not be closed.
            .process_group(0);
        let driver = driver.spawn().unwrap_or_else(|e| {
            panic!("cannot run {}: {e}; {INSTALL_HINT}", chromedriver.display())
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let profile = tempfile::Builder::new()
            .prefix("balut-chromium-")
            .tempdir()
            .expect("a temp folder for the browser profile");
        let mut browser = Browser {
            rt,
            client: None,
            driver,
            _profile: profile,
            log: Vec::new(),
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + DRIVER_TIMEOUT;
        while !driver_ready(addr) {
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!(
                    "chromedriver exited ({status}) before it answered /status; its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "chromedriver did not answer /status on {addr} within {DRIVER_TIMEOUT:?}; its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(POLL);
        }
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object literal")
        };
        let url = format!("http://{addr}/");
        let connect = async {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&url)
                .await
        };
        let connected = browser
            .rt
            .block_on(async { tokio::time::timeout(DRIVER_TIMEOUT, connect).await });
        let client = match connected {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!(
                "chromedriver refused a session of {}: {e}; its log:\n{}",
                chromium.display(),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ),
            Err(_) => panic!("no WebDriver session within {DRIVER_TIMEOUT:?}"),
        };
        let _ = std::fs::remove_file(&log_path);
        browser.client = Some(client);
        // The page's viewport itself 1280x800 (the window size counts the window's frame).
        browser.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false }),
        );
        browser
    }

    fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until drop")
    }

    /// Opens `url` and waits for the document to load (not for the page's own fetches).
    pub fn goto(&self, url: &str) {
        self.rt
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The page's current URL.
    pub fn url(&self) -> String {
        self.rt
            .block_on(self.client().current_url())
            .map(|u| u.to_string())
            .unwrap_or_else(|e| panic!("read the current URL: {e}"))
    }

    /// Runs `script` (a function body: `return ...;`) with `args` (`arguments[0]`, ...) in the
    /// page and returns its result.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs `script` as an asynchronous script: it ends by calling its last argument
    /// (`arguments[arguments.length - 1]`) with the result. The session's script timeout
    /// (30 s by default) bounds it.
    pub fn js_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt
            .block_on(self.client().execute_async(script, args))
            .unwrap_or_else(|e| panic!("async script failed: {e}\n{script}"))
    }

    /// Sends a Chrome DevTools Protocol command through chromedriver
    /// (`POST /session/{id}/goog/cdp/execute`); its result.
    pub fn cdp(&self, command: &str, params: Value) -> Value {
        let cmd = SessionPost {
            path: "goog/cdp/execute",
            body: json!({ "cmd": command, "params": params }).to_string(),
        };
        self.rt
            .block_on(self.client().issue_cmd(cmd))
            .unwrap_or_else(|e| panic!("DevTools command {command}: {e}"))
    }

    /// Runs `script` in every document this session opens from now on, before the page's
    /// own scripts (DevTools `Page.addScriptToEvaluateOnNewDocument`).
    pub fn on_new_document(&self, script: &str) {
        self.cdp(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": script }),
        );
    }

    /// Runs `script` until `done` holds for its result (every [`POLL`], up to
    /// [`STATE_TIMEOUT`]) and returns that result; panics naming `what` and the last result.
    pub fn wait(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.wait_within(what, STATE_TIMEOUT, script, done)
    }

    /// [`Browser::wait`] with another bound.
    pub fn wait_within(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.js(script, Vec::new());
            if done(&seen) {
                return seen;
            }
            if Instant::now() > deadline {
                panic!(
                    "waited {timeout:?} for {what}; last seen: {seen}\nbrowser log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until `document.querySelector(css)` exists and returns its trimmed text.
    pub fn wait_text(&self, css: &str, done: impl Fn(&str) -> bool) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e === null ? null : e.textContent.trim();",
            js_str(css)
        );
        let seen = self.wait(&format!("the text of {css}"), &script, |v| {
            v.as_str().is_some_and(&done)
        });
        seen.as_str().unwrap_or_default().to_owned()
    }

    /// The value of attribute `name` of `document.querySelector(css)` (`None`: no such
    /// element or attribute).
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        let script = format!(
            "const e = document.querySelector({}); return e === null ? null : e.getAttribute({});",
            js_str(css),
            js_str(name)
        );
        self.js(&script, Vec::new()).as_str().map(str::to_owned)
    }

    /// Waits until attribute `name` of `css` satisfies `done` and returns it.
    pub fn wait_attr(&self, css: &str, name: &str, done: impl Fn(&str) -> bool) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e === null ? null : e.getAttribute({});",
            js_str(css),
            js_str(name)
        );
        let seen = self.wait(&format!("attribute {name} of {css}"), &script, |v| {
            v.as_str().is_some_and(&done)
        });
        seen.as_str().unwrap_or_default().to_owned()
    }

    /// Clicks the element `css` (a real click: it must be visible and not covered).
    pub fn click(&self, css: &str) {
        self.rt
            .block_on(async { self.client().find(Locator::Css(css)).await?.click().await })
            .unwrap_or_else(|e| panic!("click {css}: {e}\nbrowser log:\n{}", self.log_text()));
    }

    /// Types `text` into the element `css` (focusing it), key by key.
    pub fn type_into(&self, css: &str, text: &str) {
        self.rt
            .block_on(async {
                self.client()
                    .find(Locator::Css(css))
                    .await?
                    .send_keys(text)
                    .await
            })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Clears the input `css`, then types `text` into it.
    pub fn replace_text(&self, css: &str, text: &str) {
        self.rt
            .block_on(async {
                let input = self.client().find(Locator::Css(css)).await?;
                input.clear().await?;
                input.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("replace the text of {css}: {e}"));
    }

    /// Presses and releases `key` (a character or a [`key`] code) on whatever has the focus.
    pub fn press(&self, key: char) {
        self.keys(&[KeyAction::Down { value: key }, KeyAction::Up { value: key }]);
    }

    /// Presses `key` with Shift held.
    pub fn press_with_shift(&self, key: char) {
        self.keys(&[
            KeyAction::Down { value: key::SHIFT },
            KeyAction::Down { value: key },
            KeyAction::Up { value: key },
            KeyAction::Up { value: key::SHIFT },
        ]);
    }

    fn keys(&self, actions: &[KeyAction]) {
        let mut sequence = KeyActions::new("keyboard".into());
        for action in actions {
            sequence = sequence.then(action.clone());
        }
        self.rt
            .block_on(self.client().perform_actions(sequence))
            .unwrap_or_else(|e| panic!("press keys {actions:?}: {e}"));
    }

    /// Whether the focused element matches `css`.
    pub fn focused_matches(&self, css: &str) -> bool {
        let script = format!(
            "const e = document.activeElement; return e !== null && e.matches({});",
            js_str(css)
        );
        self.js(&script, Vec::new()) == Value::Bool(true)
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        self.rt
            .block_on(self.client().screenshot())
            .unwrap_or_else(|e| panic!("take a screenshot: {e}"))
    }

    /// Every browser log entry so far (reads the new ones from chromedriver).
    pub fn log(&mut self) -> Vec<LogEntry> {
        let fresh = self
            .rt
            .block_on(self.client().issue_cmd(SessionPost {
                path: "se/log",
                body: json!({ "type": "browser" }).to_string(),
            }))
            .unwrap_or_else(|e| panic!("read the browser log (POST se/log): {e}"));
        for entry in fresh.as_array().into_iter().flatten() {
            let text = |key: &str| entry[key].as_str().unwrap_or_default().to_owned();
            self.log.push(LogEntry {
                level: text("level"),
                message: text("message"),
                source: text("source"),
            });
        }
        self.log.clone()
    }

    /// Panics when the browser log has a `SEVERE` entry for which `expected` is false.
    pub fn assert_no_errors(&mut self, expected: impl Fn(&LogEntry) -> bool) {
        let log = self.log();
        let errors: Vec<&LogEntry> = log
            .iter()
            .filter(|e| e.is_severe() && !expected(e))
            .collect();
        assert!(
            errors.is_empty(),
            "errors in the browser console: {errors:#?}\nwhole log:\n{}",
            self.log_text()
        );
    }

    /// The log entries read so far, one a line.
    fn log_text(&self) -> String {
        self.log
            .iter()
            .map(|e| format!("{} [{}] {}", e.level, e.source, e.message))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
        // The driver's group: chromedriver and any browser process left behind.
        let group = nix::unistd::Pid::from_raw(-(self.driver.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Whether chromedriver answers `GET /status` with `"ready": true`.
fn driver_ready(addr: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    drop(stream);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent
        .get(format!("http://{addr}/status"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|body| serde_json::from_str::<Value>(&body).ok())
        .is_some_and(|v| v["value"]["ready"] == true)
}

/// A JavaScript string literal of `s`.
pub fn js_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A POST to a chromedriver endpoint of the session that fantoccini has no call for:
/// `se/log` (`{"type": "browser"}`: the browser log entries since the last read) and
/// `goog/cdp/execute` (`{"cmd": ..., "params": ...}`: a DevTools command).
#[derive(Debug)]
struct SessionPost {
    /// After `session/{id}/`.
    path: &'static str,
    body: String,
}

impl WebDriverCompatibleCommand for SessionPost {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.clone()))
    }
}
