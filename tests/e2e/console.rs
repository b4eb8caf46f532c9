//! The web console in a real headless Chromium (issue 16), driven over WebDriver
//! (`balut_tests::browser`): real hosts with the example plugins, the page served by the host,
//! and the DOM contract the page follows (ids, `data-*` attributes). Every test also reads
//! the browser's console log: an error there fails it.
//!
//! `BALUT_CONSOLE_SHOTS=1 cargo test -p balut-tests --test e2e console::screenshots` writes
//! the screenshots of docs/console/.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::Instant;

use balut_tests::browser::{Browser, LogEntry, js_str, key};
use balut_tests::{Host, Lib, POLL, PluginDir, Put, STATE_TIMEOUT, lib_bytes};
use serde_json::Value;

use crate::control::{TOKEN, setup, with_args};
use crate::supervise::host_with_libs;
use crate::{chaos_entry, echo_entry, terminate, ticker_entry};

/// Every container row: `{name, state, hidden, fields: {FIELD: trimmed text}}`.
const ROWS: &str = r#"
return [...document.querySelectorAll('#containers tbody tr[data-name]')].map(tr => {
    const fields = {};
    for (const td of tr.querySelectorAll('td[data-field]')) {
        fields[td.dataset.field] = td.textContent.trim();
    }
    const link = tr.querySelector('td[data-field="name"] a[data-link="container"]');
    return {
        name: tr.dataset.name,
        state: tr.dataset.state,
        hidden: tr.hidden,
        href: link === null ? null : link.getAttribute('href'),
        fields,
    };
});"#;

/// Every plugin file row: `{file, status, bad, fields}`.
const PLUGIN_ROWS: &str = r#"
return [...document.querySelectorAll('#plugins tbody tr[data-file]')].map(tr => {
    const fields = {};
    for (const td of tr.querySelectorAll('td[data-field]')) {
        fields[td.dataset.field] = td.textContent.trim();
    }
    return { file: tr.dataset.file, status: tr.dataset.status, bad: tr.classList.contains('bad'), fields };
});"#;

/// The notice: `{kind, text}`.
const NOTICE: &str = r#"
const n = document.querySelector('#notice');
return n === null ? null : { kind: n.dataset.kind || null, text: n.textContent.trim() };"#;

/// A browser on `path` of `host`, once the console says it is ready and live.
fn open(host: &Host, path: &str) -> Browser {
    let browser = Browser::start();
    browser.goto(&format!("http://{}{path}", host.addr()));
    wait_live(&browser);
    browser
}

fn wait_live(browser: &Browser) {
    browser.wait_attr("html", "data-console", |s| s == "ready");
    browser.wait_attr("#connection", "data-state", |s| s == "live");
}

/// Polls `check` every 50 ms until it is `Ok`, for at most 30 s; panics with `what` and the
/// last `Err`.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) if Instant::now() > deadline => {
                panic!("waited {STATE_TIMEOUT:?} for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// The rows by name.
fn rows(browser: &Browser) -> Vec<Value> {
    match browser.js(ROWS, Vec::new()) {
        Value::Array(rows) => rows,
        other => panic!("the rows script gave {other}"),
    }
}

/// The row of `name` (null when there is none).
fn row(browser: &Browser, name: &str) -> Value {
    rows(browser)
        .into_iter()
        .find(|r| r["name"] == name)
        .unwrap_or(Value::Null)
}

/// Waits until the row of `name` has `data-state` `state` (and the state cell says so).
fn wait_row_state(browser: &Browser, name: &str, state: &str) -> Value {
    eventually(&format!("row {name} in state {state}"), || {
        let r = row(browser, name);
        if r["state"] == state && r["fields"]["state"] == state {
            Ok(r)
        } else {
            Err(r.to_string())
        }
    })
}

/// Why the row differs from the API's view of its container, if it does (fields that
/// change by themselves, uptime and countdowns, are left out).
fn row_mismatch(r: &Value, c: &Value) -> Option<String> {
    let name = c["name"].as_str().unwrap_or_default();
    let f = &r["fields"];
    let health = match c["health"]["healthy"].as_bool() {
        None => "—",
        Some(true) => "healthy",
        Some(false) => "unhealthy",
    };
    let generation = match c["generation"].as_u64() {
        Some(g) => g.to_string(),
        None => "—".to_owned(),
    };
    let expected = [
        ("data-state", r["state"].clone(), c["state"].clone()),
        ("state", f["state"].clone(), c["state"].clone()),
        ("name", f["name"].clone(), c["name"].clone()),
        ("health", f["health"].clone(), health.into()),
        (
            "ready",
            f["ready"].clone(),
            if c["ready"] == true { "yes" } else { "no" }.into(),
        ),
        ("generation", f["generation"].clone(), generation.into()),
        (
            "restarts",
            f["restarts"].clone(),
            c["restarts"].to_string().into(),
        ),
        (
            "error",
            f["error"].clone(),
            c["last_error"].as_str().unwrap_or_default().into(),
        ),
        (
            "href",
            r["href"].clone(),
            format!("/ui/containers/{name}").into(),
        ),
    ];
    let mut wrong: Vec<String> = expected
        .into_iter()
        .filter(|(_, seen, want)| seen != want)
        .map(|(field, seen, want)| format!("{field}: {seen} (API: {want})"))
        .collect();
    // The plugin cell names the plugin (the page may add its version).
    let plugin = c["plugin"].as_str().unwrap_or_default();
    if !f["plugin"].as_str().is_some_and(|p| p.contains(plugin)) {
        wrong.push(format!("plugin: {} (API: {plugin})", f["plugin"]));
    }
    if !wrong.is_empty() {
        return Some(format!("row {name}: {}", wrong.join(", ")));
    }
    None
}

/// Waits until the rows are exactly the API's containers, field by field.
fn wait_rows_match(browser: &Browser, host: &Host) {
    eventually("the rows to match GET /v1/containers", || {
        let containers = host.containers();
        let rows = rows(browser);
        let names = |v: &[Value], key: &str| -> BTreeSet<String> {
            v.iter()
                .map(|x| x[key].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        if names(&rows, "name") != names(&containers, "name") || rows.len() != containers.len() {
            return Err(format!(
                "rows {:?}, API containers {:?}",
                names(&rows, "name"),
                names(&containers, "name")
            ));
        }
        for c in &containers {
            let r = rows
                .iter()
                .find(|r| r["name"] == c["name"])
                .unwrap_or(&Value::Null);
            if let Some(why) = row_mismatch(r, c) {
                return Err(format!("{why}\nrow: {r}\nAPI: {c}"));
            }
        }
        Ok(())
    });
}

/// The rows that are shown (not `hidden`).
fn shown(browser: &Browser) -> BTreeSet<String> {
    rows(browser)
        .into_iter()
        .filter(|r| r["hidden"] != true)
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Whether `<dialog>` `css` is open.
fn dialog_open(browser: &Browser, css: &str) -> bool {
    let script = format!(
        "const d = document.querySelector({}); return d !== null && d.open;",
        js_str(css)
    );
    browser.js(&script, Vec::new()) == true
}

fn wait_dialog(browser: &Browser, css: &str, open: bool) {
    let script = format!(
        "const d = document.querySelector({}); return d === null ? null : d.open;",
        js_str(css)
    );
    browser.wait(
        &format!("{css} to be {}", if open { "open" } else { "closed" }),
        &script,
        |v| *v == open,
    );
}

/// Waits for a notice of `kind` whose text satisfies `text`; returns the text.
fn wait_notice(browser: &Browser, kind: &str, text: impl Fn(&str) -> bool) -> String {
    let seen = browser.wait(&format!("a notice of kind {kind}"), NOTICE, |v| {
        v["kind"] == kind && v["text"].as_str().is_some_and(&text)
    });
    seen["text"].as_str().unwrap_or_default().to_owned()
}

/// Clicks `button[data-action=ACTION]` in the row of `name`.
fn click_action(browser: &Browser, name: &str, action: &str) {
    browser.click(&format!(
        "#containers tbody tr[data-name=\"{name}\"] button[data-action=\"{action}\"]"
    ));
}

/// Stops `name` with its button and the confirm dialog's "yes".
fn stop_with_button(browser: &Browser, name: &str) {
    click_action(browser, name, "stop");
    wait_dialog(browser, "#confirm-dialog", true);
    let message = browser.wait_text("#confirm-message", |t| !t.is_empty());
    assert!(
        message.contains(name),
        "the confirm message should name {name}: {message:?}"
    );
    browser.click("#confirm-dialog button[data-confirm=\"yes\"]");
    wait_dialog(browser, "#confirm-dialog", false);
}

/// A marker in the page's `window`: it survives everything but a reload.
fn set_marker(browser: &Browser) {
    browser.js("window.__balutTestMarker = 4242; return true;", Vec::new());
}

fn assert_not_reloaded(browser: &Browser) {
    assert_eq!(
        browser.js("return window.__balutTestMarker || null;", Vec::new()),
        4242,
        "the page was reloaded"
    );
}

fn path_of(browser: &Browser) -> String {
    browser
        .js("return location.pathname;", Vec::new())
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The folder's config with the example plugins: http-echo `web`, ticker `tick` and two
/// chaos instances; the host is started and all four are running.
fn example_host(extra: &str) -> (PluginDir, Host) {
    let mut dir = PluginDir::with(&[Lib::HttpEcho, Lib::Ticker, Lib::Chaos]);
    let ticks = dir.path().join("ticks");
    dir.write_config(&format!(
        "{}{}{}{}{extra}",
        echo_entry("web", "hello from the console test"),
        ticker_entry("tick", &ticks, 1000),
        chaos_entry("chaos", ""),
        chaos_entry("chaos-2", ""),
    ));
    let host = Host::start(&dir);
    for name in ["web", "tick", "chaos", "chaos-2"] {
        host.wait_state(name, "running", STATE_TIMEOUT);
    }
    (dir, host)
}

/// No error in the browser console at all.
fn no_errors(_: &LogEntry) -> bool {
    false
}

/// The harness itself: a page's console error reaches the browser log the tests read (so
/// "no console errors" is never checked against a log that is always empty); a script
/// given to `on_new_document` runs before the page's own; async scripts answer.
#[test]
fn the_browser_harness_reads_the_console_log() {
    let mut browser = Browser::start();
    browser.on_new_document("window.__early = 'early';");
    browser.goto(
        "data:text/html,<title>t</title><script>console.error('boom-' + window.__early)</script>",
    );
    browser.wait("the page's title", "return document.title;", |v| v == "t");
    let log = browser.log();
    assert!(
        log.iter()
            .any(|e| e.is_severe() && e.message.contains("boom-early")),
        "{log:#?}"
    );
    let answer = browser.js_async(
        "const done = arguments[arguments.length - 1]; setTimeout(() => done(7), 10);",
        Vec::new(),
    );
    assert_eq!(answer, 7);
    let viewport = browser.js("return [innerWidth, innerHeight];", Vec::new());
    assert_eq!(viewport, serde_json::json!([1280, 800]));
}

#[test]
fn the_overview_matches_the_api_and_the_filter_hides_rows() {
    let (_dir, host) = example_host("");
    let mut browser = open(&host, "/");

    let about = host.get_json("/v1/host");
    let version = about["version"]
        .as_str()
        .unwrap_or_else(|| panic!("GET /v1/host has a version: {about}"));
    browser.wait_text("#host-version", |t| t.contains(version));
    wait_rows_match(&browser, &host);
    let count = browser.wait_text("#container-count", |t| !t.is_empty());
    assert!(count.contains("4 of 4"), "#container-count: {count:?}");
    for name in ["web", "tick", "chaos", "chaos-2"] {
        for action in ["start", "stop", "restart"] {
            let css = format!(
                "#containers tbody tr[data-name=\"{name}\"] td[data-field=\"actions\"] button[data-action=\"{action}\"]"
            );
            assert!(
                browser.attr(&css, "data-action").is_some(),
                "no {css} in the page"
            );
        }
    }

    // The plugin files, as GET /v1/plugins has them.
    let plugins = host.plugins();
    eventually("the plugin rows to match GET /v1/plugins", || {
        let seen = browser.js(PLUGIN_ROWS, Vec::new());
        let seen = seen.as_array().cloned().unwrap_or_default();
        if seen.len() != plugins.len() {
            return Err(format!(
                "{} rows for {} files: {seen:?}",
                seen.len(),
                plugins.len()
            ));
        }
        for p in &plugins {
            let r = seen
                .iter()
                .find(|r| r["file"] == p["file"])
                .ok_or_else(|| format!("no row for {}", p["file"]))?;
            let generation = p["generation"].to_string();
            if r["status"] != p["status"]
                || r["fields"]["file"] != p["file"]
                || r["fields"]["status"] != p["status"]
                || !r["fields"]["plugin"]
                    .as_str()
                    .is_some_and(|n| n.contains(p["name"].as_str().unwrap_or("?")))
                || r["fields"]["generation"] != generation.as_str()
                || r["bad"] == true
            {
                return Err(format!("row {r} for {p}"));
            }
        }
        Ok(())
    });

    // The filter matches names, plugins and states.
    for (typed, expected) in [
        ("tick", names(&["tick"])),
        ("chaos", names(&["chaos", "chaos-2"])),
        ("http-echo", names(&["web"])),
        ("running", names(&["web", "tick", "chaos", "chaos-2"])),
        ("no-such-thing", names(&[])),
    ] {
        browser.replace_text("#filter", typed);
        eventually(
            &format!("the filter {typed:?} to show {expected:?}"),
            || {
                let seen = shown(&browser);
                if seen == expected {
                    Ok(())
                } else {
                    Err(format!("{seen:?}"))
                }
            },
        );
        let count = browser.wait_text("#container-count", |t| {
            t.contains(&format!("{} of 4", expected.len()))
        });
        assert!(count.contains("container"), "{count:?}");
    }
    browser.replace_text("#filter", "");
    eventually("every row shown again", || match shown(&browser).len() {
        4 => Ok(()),
        n => Err(format!("{n} rows shown")),
    });

    let renders = browser.js(
        "return performance.getEntriesByName('balut:render:containers').map(e => e.duration);",
        Vec::new(),
    );
    assert!(
        renders.as_array().is_some_and(|r| !r.is_empty()),
        "no performance measure balut:render:containers: {renders}"
    );

    // /ui/ serves the same page.
    browser.goto(&format!("http://{}/ui/", host.addr()));
    wait_live(&browser);
    wait_rows_match(&browser, &host);
    browser.assert_no_errors(no_errors);
}

#[test]
fn stop_and_start_with_the_buttons_and_the_keyboard() {
    let (_dir, host) = example_host("");
    let mut browser = open(&host, "/");
    wait_rows_match(&browser, &host);
    set_marker(&browser);

    // Keyboard: Tab from the filter box to a stop button, Enter opens the confirm dialog
    // with the focus in it, Escape closes it and nothing is stopped.
    browser.click("#filter");
    let mut presses = 0;
    while !browser.focused_matches("#containers button[data-action=\"stop\"]") {
        presses += 1;
        assert!(
            presses <= 100,
            "100 presses of Tab never reached a stop button"
        );
        browser.press(key::TAB);
    }
    let target = browser.js(
        "return document.activeElement.closest('tr').dataset.name;",
        Vec::new(),
    );
    let target = target.as_str().unwrap_or_default().to_owned();
    browser.press(key::ENTER);
    wait_dialog(&browser, "#confirm-dialog", true);
    browser.wait(
        "the focus in the confirm dialog",
        "return document.activeElement !== null && document.activeElement.closest('#confirm-dialog') !== null;",
        |v| *v == true,
    );
    let message = browser.wait_text("#confirm-message", |t| !t.is_empty());
    assert!(message.contains(&target), "{message:?} names {target}");
    browser.press(key::ESCAPE);
    wait_dialog(&browser, "#confirm-dialog", false);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(host.state(&target), "running", "Escape stopped {target}");

    // "no" stops nothing either.
    click_action(&browser, "chaos", "stop");
    wait_dialog(&browser, "#confirm-dialog", true);
    browser.click("#confirm-dialog button[data-confirm=\"no\"]");
    wait_dialog(&browser, "#confirm-dialog", false);
    assert_eq!(host.state("chaos"), "running", "\"no\" stopped chaos");

    // Stop with the button: the row follows the event stream; the notice says it went well.
    stop_with_button(&browser, "chaos");
    wait_row_state(&browser, "chaos", "stopped");
    assert_eq!(host.state("chaos"), "stopped");
    wait_notice(&browser, "ok", |t| !t.is_empty());
    wait_rows_match(&browser, &host);

    // Start it again (no confirmation asked).
    click_action(&browser, "chaos", "start");
    assert!(
        !dialog_open(&browser, "#confirm-dialog"),
        "start asked for a confirmation"
    );
    wait_row_state(&browser, "chaos", "running");

    // A change made elsewhere (the API, not the page) shows through the event stream.
    let (status, body) = host.post("/v1/containers/chaos-2/stop");
    assert_eq!(status, 200, "{body}");
    wait_row_state(&browser, "chaos-2", "stopped");
    wait_rows_match(&browser, &host);

    // The events list: newest first, with the state events of what just happened.
    let events = browser.wait(
        "state events in #events",
        "return [...document.querySelectorAll('#events li[data-id][data-type]')].map(li => ({id: Number(li.dataset.id), type: li.dataset.type, text: li.textContent}));",
        |v| {
            v.as_array().is_some_and(|l| {
                l.iter()
                    .any(|e| e["type"] == "state" && e["text"].as_str().unwrap_or_default().contains("chaos-2"))
            })
        },
    );
    let ids: Vec<u64> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "#events is not newest first: {ids:?}"
    );
    browser.replace_text("#events-filter", "chaos-2");
    browser.wait(
        "#events-filter to hide the events without chaos-2",
        "const lis = [...document.querySelectorAll('#events li[data-id]')]; \
         const shown = lis.filter(li => !li.hidden && li.getClientRects().length > 0); \
         return shown.length > 0 && shown.every(li => li.textContent.includes('chaos-2')) && shown.length < lis.length;",
        |v| *v == true,
    );
    assert_not_reloaded(&browser);
    browser.assert_no_errors(no_errors);
}

#[test]
fn plugin_files_dropped_in_appear_without_a_reload() {
    let config = format!("{}{}", echo_entry("web", "hot"), chaos_entry("chaos", ""));
    let (dir, host) = host_with_libs(&[Lib::Chaos], &config);
    host.wait_state("chaos", "running", STATE_TIMEOUT);
    let mut browser = open(&host, "/");
    set_marker(&browser);
    wait_rows_match(&browser, &host);

    // A good file: its plugin row, then its container running.
    dir.put(
        Lib::HttpEcho.file_name(),
        &lib_bytes(Lib::HttpEcho),
        Put::Rename,
    );
    browser.wait_attr(
        "#plugins tbody tr[data-file=\"libhttp_echo.so\"]",
        "data-status",
        |s| s == "loaded",
    );
    wait_row_state(&browser, "web", "running");
    host.wait_state("web", "running", STATE_TIMEOUT);
    wait_rows_match(&browser, &host);

    // A broken file: its row stands out with the reason.
    dir.put("libbroken.so", &lib_bytes(Lib::NoExport), Put::Rename);
    let entry = host.wait_plugin("libbroken.so", "refused", STATE_TIMEOUT, |p| {
        p["status"] == "error"
    });
    let error = entry["error"].as_str().unwrap_or_default().to_owned();
    assert!(!error.is_empty(), "{entry}");
    let css = "#plugins tbody tr[data-file=\"libbroken.so\"]";
    let status = browser.wait_attr(css, "data-status", |s| s == "error");
    assert_eq!(status, "error");
    let broken = eventually("the broken file's row to show its reason", || {
        let rows = browser.js(PLUGIN_ROWS, Vec::new());
        let r = rows
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["file"] == "libbroken.so")
            .cloned()
            .unwrap_or(Value::Null);
        let reason = r["fields"]["reason"].as_str().unwrap_or_default();
        let head: String = error.chars().take(60).collect();
        if r["bad"] == true && reason.contains(&head) {
            Ok(r)
        } else {
            Err(r.to_string())
        }
    });
    assert_eq!(broken["fields"]["status"], "error", "{broken}");

    // Removed: its row goes.
    dir.remove("libbroken.so");
    browser.wait(
        "the broken file's row to go",
        &format!("return document.querySelector({}) === null;", js_str(css)),
        |v| *v == true,
    );

    // Reload the config: a bad file is refused with its status, a good one applied.
    let config = dir.config().expect("a config").to_path_buf();
    std::fs::write(&config, "[containers.x]\nplugin = 42\n").expect("write a bad config");
    browser.click("#reload-config");
    let text = wait_notice(&browser, "error", |t| {
        t.contains("400") || t.contains("422")
    });
    assert!(text.len() > 4, "the notice gives the reason: {text:?}");
    std::fs::write(
        &config,
        format!(
            "{}{}{}",
            echo_entry("web", "hot"),
            chaos_entry("chaos", ""),
            chaos_entry("added", "")
        ),
    )
    .expect("write a good config");
    browser.click("#reload-config");
    wait_notice(&browser, "ok", |t| !t.is_empty());
    wait_row_state(&browser, "added", "running");

    assert_not_reloaded(&browser);
    // The refused reload's 4xx answer is logged by the browser itself as a failed resource.
    browser.assert_no_errors(|e| is_http_error_of(e, &["400", "422"]));
}

/// A browser log entry of a fetch answered with one of these HTTP statuses (Chromium logs
/// every such answer, whatever the page does with it).
fn is_http_error_of(e: &LogEntry, statuses: &[&str]) -> bool {
    e.source == "network"
        && statuses
            .iter()
            .any(|s| e.message.contains(&format!("status of {s}")))
}

#[test]
fn with_a_token_an_action_without_it_is_refused_and_with_it_succeeds() {
    let (dir, token_file) = setup(&chaos_entry("a", ""));
    let args = with_args(&dir, &[&"--token-file".into(), &token_file.into()]);
    let host = Host::spawn_with(args, Some(dir.tmp()), &[]);
    host.wait_state("a", "running", STATE_TIMEOUT);
    assert_eq!(host.get_json("/v1/host")["token_required"], true);
    let mut browser = open(&host, "/");

    let stored = "return sessionStorage.getItem('balut.token');";
    // A wrong token: refused, 401 shown, nothing stopped, the stored token cleared.
    stop_with_button(&browser, "a");
    wait_dialog(&browser, "#token-dialog", true);
    browser
        .attr("#token-input", "type")
        .map_or_else(|| panic!("no #token-input"), |t| assert_eq!(t, "password"));
    browser.type_into("#token-input", "not-the-token");
    browser.click("#token-submit");
    let refused = wait_notice(&browser, "error", |t| t.contains("401"));
    assert!(
        refused.contains("bearer token"),
        "the notice gives the API's message: {refused:?}"
    );
    assert_eq!(host.state("a"), "running");
    browser.wait("the stored token to be cleared", stored, Value::is_null);

    // Asked again at the next action; the right token works and is kept for the session.
    stop_with_button(&browser, "a");
    wait_dialog(&browser, "#token-dialog", true);
    browser.replace_text("#token-input", TOKEN);
    browser.click("#token-submit");
    wait_row_state(&browser, "a", "stopped");
    wait_notice(&browser, "ok", |t| !t.is_empty());
    assert_eq!(browser.js(stored, Vec::new()), TOKEN);
    assert!(!browser.url().contains(TOKEN), "the token is in the URL");

    // The next action is not asked for it.
    click_action(&browser, "a", "start");
    wait_row_state(&browser, "a", "running");
    assert!(!dialog_open(&browser, "#token-dialog"), "asked again");
    browser.assert_no_errors(|e| is_http_error_of(e, &["401"]));
}

/// A loopback address nobody listens on right now.
fn free_addr() -> String {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port");
    format!("127.0.0.1:{port}")
}

/// A host on `listen` with chaos instances `names`.
fn chaos_host_on(listen: &str, names: &[&str]) -> (PluginDir, Host) {
    let (dir, _) = setup(&names.iter().map(|n| chaos_entry(n, "")).collect::<String>());
    let args = with_args(&dir, &[&"--listen".into(), &listen.into()]);
    let host = Host::spawn_with(args, Some(dir.tmp()), &[]);
    for name in names {
        host.wait_state(name, "running", STATE_TIMEOUT);
    }
    (dir, host)
}

#[test]
fn the_console_reconnects_after_the_host_restarts() {
    let listen = free_addr();
    let (_old_dir, mut old) = chaos_host_on(&listen, &["old-a", "old-b"]);
    let mut browser = open(&old, "/");
    wait_rows_match(&browser, &old);
    set_marker(&browser);

    assert_eq!(terminate(&mut old), 0, "{}", old.logs());
    browser.wait_attr("#connection", "data-state", |s| s == "reconnecting");
    let text = browser.wait_text("#connection", |t| !t.is_empty());
    assert!(!text.is_empty());

    let (_new_dir, new) = chaos_host_on(&listen, &["new-a"]);
    browser.wait_attr("#connection", "data-state", |s| s == "live");
    wait_rows_match(&browser, &new);
    assert_not_reloaded(&browser);
    // While the host was gone the browser logged its requests to it that failed: the
    // stream cut at the shutdown, connections refused until the new host listened.
    let host_went_away = |e: &LogEntry| {
        e.source == "network"
            && e.message.starts_with(&format!("http://{listen}/"))
            && [
                "ERR_CONNECTION_REFUSED",
                "ERR_CONNECTION_RESET",
                "ERR_EMPTY_RESPONSE",
                "ERR_INCOMPLETE_CHUNKED_ENCODING",
            ]
            .iter()
            .any(|kind| e.message.contains(kind))
    };
    browser.assert_no_errors(host_went_away);
}

#[test]
fn the_detail_view_shows_history_probes_logs_and_config() {
    let probes = "liveness = { period_ms = 200, grace_ms = 0 }\nreadiness = { period_ms = 200 }\n";
    let config = format!(
        "{}{probes}{}",
        chaos_entry("probed", ""),
        chaos_entry("other", "")
    );
    let (_dir, host) = host_with_libs(&[Lib::Chaos], &config);
    host.wait_state("other", "running", STATE_TIMEOUT);
    let api = host.wait_until("probe records of probed", STATE_TIMEOUT, |h| {
        let c = h.get_json("/v1/containers/probed");
        (c["probes"].as_array().map_or(0, Vec::len) >= 3).then_some(c)
    });
    assert!(
        api["config"].is_object(),
        "GET /v1/containers/probed has config: {api}"
    );

    // The deep link opens the detail.
    let mut browser = open(&host, "/ui/containers/probed");
    set_marker(&browser);
    browser.wait_attr("#detail", "data-name", |s| s == "probed");
    assert_eq!(browser.attr("#detail", "hidden"), None, "#detail is hidden");
    let history = browser.wait(
        "the history of probed",
        "return [...document.querySelectorAll('#detail-history li')].map(li => li.textContent);",
        |v| v.as_array().is_some_and(|l| !l.is_empty()),
    );
    assert!(
        history.to_string().contains("running"),
        "the history shows the start: {history}"
    );
    let circles = browser.wait(
        "probe chart circles",
        "return [...document.querySelectorAll('#probe-chart circle')].map(c => [c.getAttribute('data-ms'), c.getAttribute('data-ok')]);",
        |v| v.as_array().is_some_and(|l| l.len() >= 3),
    );
    let circles = circles.as_array().cloned().unwrap_or_default();
    assert!(
        circles.len() <= 10,
        "one circle per record, at most 10: {circles:?}"
    );
    for c in &circles {
        let ms = c[0].as_str().unwrap_or_default();
        assert!(
            ms.parse::<f64>().is_ok(),
            "data-ms {ms:?} is a number: {circles:?}"
        );
        assert!(
            ["true", "false"].contains(&c[1].as_str().unwrap_or_default()),
            "data-ok: {circles:?}"
        );
    }
    assert_eq!(
        browser.js(
            "return document.querySelector('#probe-chart').tagName.toLowerCase();",
            Vec::new()
        ),
        "svg"
    );
    browser.wait(
        "log lines of probed",
        "return document.querySelectorAll('#detail-logs .log-line').length;",
        |v| v.as_u64().is_some_and(|n| n >= 1),
    );
    let config = browser.wait(
        "the config of probed as JSON",
        "const t = document.querySelector('#detail-config').textContent; try { return JSON.parse(t); } catch (e) { return t; }",
        |v| v.is_object(),
    );
    assert_eq!(config["plugin"], "chaos", "{config}");
    for action in ["start", "stop", "restart"] {
        let css = format!("#detail button[data-action=\"{action}\"]");
        assert!(browser.attr(&css, "data-action").is_some(), "no {css}");
    }

    // Escape closes it, back at /ui/.
    browser.press(key::ESCAPE);
    browser.wait(
        "#detail to close on Escape",
        "return document.querySelector('#detail').hidden;",
        |v| *v == true,
    );
    browser.wait("the URL /ui/", "return location.pathname;", |v| v == "/ui/");

    // A row's link opens another detail in place; the close button closes it.
    browser.click("#containers tbody tr[data-name=\"other\"] a[data-link=\"container\"]");
    browser.wait_attr("#detail", "data-name", |s| s == "other");
    browser.wait(
        "the URL of other's detail",
        "return location.pathname;",
        |v| v == "/ui/containers/other",
    );
    browser.click("#detail-close");
    browser.wait(
        "#detail to close",
        "return document.querySelector('#detail').hidden;",
        |v| *v == true,
    );
    assert_eq!(path_of(&browser), "/ui/");
    assert_not_reloaded(&browser);
    browser.assert_no_errors(no_errors);
}

/// A chaos instance whose start always fails, retried after 20 s (no jitter): after the
/// immediate retry it waits in `backoff`.
fn crash_loop_entry(name: &str) -> String {
    format!(
        "[containers.{name}]\nplugin = \"chaos\"\nconfig = {{ fail_start = true }}\n\
         backoff = {{ initial_ms = 20000, max_ms = 20000, jitter = 0.0 }}\n"
    )
}

/// The seconds of "in N s".
fn countdown(text: &str) -> Option<u64> {
    text.strip_prefix("in ")?
        .strip_suffix(" s")?
        .trim()
        .parse()
        .ok()
}

#[test]
fn a_crash_loop_shows_the_next_retry_counting_down() {
    let config = format!("{}{}", crash_loop_entry("looping"), chaos_entry("calm", ""));
    let (_dir, host) = host_with_libs(&[Lib::Chaos], &config);
    let api = host.wait_state("looping", "backoff", STATE_TIMEOUT);
    let mut browser = open(&host, "/");
    let r = wait_row_state(&browser, "looping", "backoff");
    let error = api["last_error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "{api}");
    assert_eq!(r["fields"]["error"], error, "{r}");
    assert_eq!(r["fields"]["restarts"], api["restarts"].to_string(), "{r}");
    let first = eventually("a countdown in the next-retry cell", || {
        let text = row(&browser, "looping")["fields"]["next-retry"].clone();
        let text = text.as_str().unwrap_or_default();
        countdown(text).ok_or_else(|| text.to_owned())
    });
    assert!((1..=20).contains(&first), "in {first} s");
    eventually("the countdown to go down", || {
        let text = row(&browser, "looping")["fields"]["next-retry"].clone();
        match countdown(text.as_str().unwrap_or_default()) {
            Some(n) if n < first => Ok(()),
            _ => Err(text.to_string()),
        }
    });
    assert_eq!(row(&browser, "calm")["fields"]["next-retry"], "—");
    browser.assert_no_errors(no_errors);
}

/// Width and height of a PNG (from its IHDR chunk), if `bytes` is one.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let signature = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || &bytes[..8] != signature || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

/// The screenshots of docs/console/: written there when `BALUT_CONSOLE_SHOTS` is set, else
/// to a temp folder, and checked to be PNGs of about the window's size.
#[test]
fn screenshots() {
    let keep = std::env::var_os("BALUT_CONSOLE_SHOTS").is_some_and(|v| !v.is_empty() && v != "0");
    let temp = tempfile::tempdir().expect("a temp folder");
    let out = if keep {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console")
    } else {
        temp.path().to_path_buf()
    };
    std::fs::create_dir_all(&out).expect("create the screenshot folder");

    // The probes table goes into the last entry of example_host's config, chaos-2's.
    let probes = "liveness = { period_ms = 1000, grace_ms = 0 }\n";
    let (dir, host) = example_host(&format!("{probes}{}", crash_loop_entry("flaky")));
    dir.put("libbroken.so", &lib_bytes(Lib::NoExport), Put::Rename);
    host.wait_plugin("libbroken.so", "refused", STATE_TIMEOUT, |p| {
        p["status"] == "error"
    });
    host.wait_state("flaky", "backoff", STATE_TIMEOUT);
    host.wait_until("probe records of chaos-2", STATE_TIMEOUT, |h| {
        let c = h.get_json("/v1/containers/chaos-2");
        (c["probes"].as_array().map_or(0, Vec::len) >= 4).then_some(())
    });

    let mut browser = open(&host, "/");
    wait_row_state(&browser, "flaky", "backoff");
    browser.wait_attr(
        "#plugins tbody tr[data-file=\"libbroken.so\"]",
        "data-status",
        |s| s == "error",
    );
    let mut shots = vec![("overview.png", browser.screenshot())];

    // A detail by its deep link, once `count_css` counts at least `at_least` elements.
    let detail = |name: &str, count_css: &str, at_least: u64| {
        browser.goto(&format!("http://{}/ui/containers/{name}", host.addr()));
        wait_live(&browser);
        browser.wait_attr("#detail", "data-name", |s| s == name);
        browser.wait(
            &format!("{at_least} of {count_css}"),
            &format!(
                "return document.querySelectorAll({}).length;",
                js_str(count_css)
            ),
            |v| v.as_u64().is_some_and(|n| n >= at_least),
        );
        browser.screenshot()
    };
    shots.push(("detail.png", detail("chaos-2", "#probe-chart circle", 3)));
    shots.push(("crash-loop.png", detail("flaky", "#detail-history li", 3)));

    for (name, png) in &shots {
        let (w, h) = png_size(png).unwrap_or_else(|| panic!("{name} is not a PNG"));
        assert!((w, h) == (1280, 800), "{name} is {w}x{h}");
        std::fs::write(out.join(name), png).expect("write a screenshot");
        eprintln!("{name}: {w}x{h}, {} bytes", png.len());
    }
    browser.assert_no_errors(no_errors);
}
