//! The web console over real HTTP: the page at `/`, `/ui/` and `/ui/containers/NAME` with
//! its Content-Security-Policy, each asset with its content type, an ETag and 304 on
//! `If-None-Match`, a JSON 404 for an unknown asset, `GET /v1/host` (with and without a
//! token), and the one-container view's `config`. (The page's behaviour in a real browser
//! is tested apart.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use balut_tests::{Host, Lib, PluginDir, STATE_TIMEOUT};
use serde_json::Value;

use crate::control::{setup, with_args};
use crate::{chaos_entry, is_rfc3339};

/// One raw HTTP/1.1 answer.
struct Answer {
    status: u16,
    /// Header names in lower case, in the order sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends `METHOD path` with `headers` on a fresh connection and reads the whole answer
/// (`Connection: close`), redirects not followed.
fn request(host: &Host, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut socket = TcpStream::connect_timeout(&host.addr(), Duration::from_secs(10))
        .expect("connect to the API");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        host.addr()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    socket.read_to_end(&mut raw).expect("read the answer");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn assert_console_headers(answer: &Answer, what: &str) {
    assert_eq!(
        answer.header("content-security-policy"),
        Some(CSP),
        "{what}"
    );
    assert_eq!(
        answer.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(
        answer.header("referrer-policy"),
        Some("no-referrer"),
        "{what}"
    );
    assert_eq!(answer.header("cache-control"), Some("no-cache"), "{what}");
}

fn chaos_host(names: &[&str], extra: &[&std::ffi::OsString]) -> (PluginDir, Host) {
    let config: String = names.iter().map(|n| chaos_entry(n, "")).collect();
    let (dir, _token) = setup(&config);
    let host = Host::spawn(with_args(&dir, extra), Some(dir.tmp()));
    for name in names {
        host.wait_until(&format!("{name} to run"), STATE_TIMEOUT, |h| {
            h.find_container(name).filter(|c| c["state"] == "running")
        });
    }
    (dir, host)
}

#[test]
fn the_page_and_its_assets_are_served_with_their_headers() {
    let (_dir, host) = chaos_host(&["a"], &[]);

    let mut page_etag = None;
    for path in [
        "/",
        "/ui/",
        "/ui/containers/a",
        "/ui/containers/no-such-one",
    ] {
        let page = request(&host, "GET", path, &[]);
        assert_eq!(page.status, 200, "GET {path}");
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8"),
            "GET {path}"
        );
        assert_console_headers(&page, path);
        let text = String::from_utf8_lossy(&page.body);
        assert!(
            text.contains("<html") && text.contains("/ui/assets/app.js"),
            "{text}"
        );
        let etag = page.header("etag").map(str::to_owned);
        assert!(etag.is_some(), "GET {path} has an ETag");
        assert!(
            page_etag.is_none() || page_etag == etag,
            "one page, one ETag"
        );
        page_etag = etag;
    }
    let ui = request(&host, "GET", "/ui", &[]);
    assert!(
        (300..400).contains(&ui.status),
        "GET /ui redirects: {}",
        ui.status
    );
    assert_eq!(ui.header("location"), Some("/ui/"));

    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let path = format!("/ui/assets/{file}");
        let asset = request(&host, "GET", &path, &[]);
        assert_eq!(asset.status, 200, "GET {path}");
        assert_eq!(asset.header("content-type"), Some(content_type), "{path}");
        assert_console_headers(&asset, &path);
        assert!(!asset.body.is_empty(), "{path} has content");
        let etag = asset
            .header("etag")
            .unwrap_or_else(|| panic!("{path} has no ETag"))
            .to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        let again = request(&host, "GET", &path, &[("If-None-Match", &etag)]);
        assert_eq!(again.status, 304, "GET {path} with its ETag");
        assert!(again.body.is_empty(), "a 304 has no body");
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let other = request(&host, "GET", &path, &[("If-None-Match", "\"other\"")]);
        assert_eq!(other.status, 200, "GET {path} with another ETag");

        let head = request(&host, "HEAD", &path, &[]);
        assert_eq!(head.status, 200, "HEAD {path}");
        assert_eq!(head.header("content-type"), Some(content_type));
        assert!(head.body.is_empty(), "HEAD {path} has no body");
    }

    let unknown = request(&host, "GET", "/ui/assets/nope.js", &[]);
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.header("content-type"),
        Some("application/json"),
        "a JSON 404"
    );
    let error = unknown.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("nope.js"), "{error}");
}

#[test]
fn v1_host_tells_version_pid_and_whether_a_token_is_needed() {
    let (dir, host) = chaos_host(&["a"], &[]);
    let info = host.get_json("/v1/host");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{info}");
    let interface = info["interface"].as_str().unwrap_or_default();
    assert!(
        interface.split('.').count() == 2 && interface.split('.').all(|p| p.parse::<u32>().is_ok()),
        "{info}"
    );
    assert_eq!(info["token_required"], false, "{info}");
    assert_eq!(info["pid"], host.pid(), "{info}");
    // At least the loaded and state events of the start.
    assert!(info["last_event_id"].as_u64().unwrap_or(0) >= 2, "{info}");
    assert!(
        is_rfc3339(info["started_at"].as_str().unwrap_or_default()),
        "{info}"
    );
    let plugin_dir = info["plugin_dir"].as_str().unwrap_or_default();
    assert!(
        std::path::Path::new(plugin_dir).ends_with(dir.plugins().file_name().expect("a name")),
        "{info}"
    );
    let config_file = info["config_file"].as_str().unwrap_or_default();
    assert!(config_file.ends_with(".toml"), "{info}");
    drop(host);

    let token_file = dir.path().join("token");
    let host = Host::spawn(
        with_args(&dir, &[&"--token-file".into(), &token_file.into()]),
        Some(dir.tmp()),
    );
    let guarded = host.get_json("/v1/host");
    assert_eq!(guarded["token_required"], true, "{guarded}");
    assert_ne!(guarded["started_at"], Value::Null);
    // Reading needs no token; the page works without one until an action.
    let page = request(&host, "GET", "/", &[]);
    assert_eq!(page.status, 200);
}

#[test]
fn the_one_container_view_shows_its_config_file_entry() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(
        "[containers.a]\nplugin = \"chaos\"\nrestart = \"never\"\nstop_timeout_ms = 4000\n\
         requires = []\nconfig = { start_delay_ms = 1 }\n\
         [containers.a.liveness]\nperiod_ms = 3000\n",
    );
    let host = Host::start(&dir);
    let a = host.wait_until("a to run", STATE_TIMEOUT, |h| {
        h.find_container("a").filter(|c| c["state"] == "running")
    });
    assert!(
        a.get("config").is_none(),
        "the list leaves the config out: {a}"
    );
    let detail = host.get_json("/v1/containers/a");
    let config = &detail["config"];
    assert_eq!(config["plugin"], "chaos", "{detail}");
    assert_eq!(config["restart"], "never", "{detail}");
    assert_eq!(config["stop_timeout_ms"], 4000, "{detail}");
    assert_eq!(config["requires"], serde_json::json!([]), "{detail}");
    assert_eq!(
        config["config"],
        serde_json::json!({ "start_delay_ms": 1 }),
        "{detail}"
    );
    assert_eq!(config["liveness"]["period_ms"], 3000, "{detail}");
    assert_eq!(config["liveness"]["disabled"], false, "{detail}");
}

#[test]
fn a_default_instance_has_no_config_entry() {
    let dir = PluginDir::with(&[Lib::Chaos]);
    let host = Host::start(&dir);
    host.wait_until("chaos to run", STATE_TIMEOUT, |h| {
        h.find_container("chaos")
            .filter(|c| c["state"] == "running")
    });
    let detail = host.get_json("/v1/containers/chaos");
    assert_eq!(detail["config"], Value::Null, "{detail}");
}
