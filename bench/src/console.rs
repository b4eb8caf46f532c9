//! `console` (runs only when named): the web console rendering 1,000 containers in a real
//! headless Chromium (`balut_tests::browser`: chromedriver + Chromium, the Debian packages
//! `chromium` and `chromium-driver`), against a release host with 1,000 idle `chaos`
//! instances (200 with `--quick`), the `scale` benchmark's config.
//!
//! - `console_ready_ms`: navigation start -> `<html data-console="ready">` (the first
//!   containers + plugins render done and the event stream open), read in the page by a
//!   `MutationObserver` installed before the page's own scripts;
//! - `console_first_render_ms`: the duration of the first `balut:render:containers`
//!   performance measure (one full render of the container table);
//! - `console_filter_ms`: `#filter` set to a name (one `input` event) -> every other row
//!   `hidden`, checked right after the event and then at each animation frame, in the page;
//!   the median of 5 filters;
//! - `console_event_to_row_p50_ms` / `_p90_ms`: `POST /v1/containers/cN/stop` (or `start`)
//!   sent -> its row's `data-state` is `stopped` (`running`), seen by a `MutationObserver`
//!   (wall clock of this machine on both sides), over 20 changes;
//! - `console_event_to_client_p50_ms`: the same request sent -> its `state` event read by a
//!   plain client of `/v1/events` in this process (the floor: what the page adds is the
//!   difference);
//! - `console_event_to_page_p50_ms`: the same request sent -> its `state` event delivered to
//!   the page's `EventSource` (a listener added beside the page's own).

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, ensure};
use balut_tests::browser::Browser;
use serde_json::{Value, json};

use crate::Artifacts;
use crate::host::{Dirs, Host};
use crate::report::{Figures, median, ms, percentile};
use crate::scale::write_config;

/// Records, before the page's scripts run, when `<html>` gets `data-console="ready"`, and
/// every change of a container row's `data-state` (`window.__bench`).
const OBSERVER: &str = r#"
window.__bench = { readyAt: null, changes: [], arrivals: [] };
const PageEventSource = window.EventSource;
window.EventSource = function (url, options) {
    const source = new PageEventSource(url, options);
    // The host names its events (`event: state`).
    source.addEventListener('state', (e) => {
        const at = performance.timeOrigin + performance.now();
        try {
            const d = JSON.parse(e.data);
            if (d.type === 'state') window.__bench.arrivals.push({ name: d.container, state: d.to, at });
        } catch (_) {}
    });
    return source;
};
window.EventSource.prototype = PageEventSource.prototype;
Object.assign(window.EventSource, { CONNECTING: 0, OPEN: 1, CLOSED: 2 });
new MutationObserver((mutations) => {
    const now = performance.timeOrigin + performance.now();
    for (const m of mutations) {
        const el = m.target;
        if (el === document.documentElement) {
            if (window.__bench.readyAt === null && el.getAttribute('data-console') === 'ready') {
                window.__bench.readyAt = performance.now();
            }
            continue;
        }
        const rows = [];
        if (m.type === 'attributes' && el.matches && el.matches('tr[data-name]')) rows.push(el);
        for (const n of m.addedNodes || []) {
            if (n.nodeType !== 1) continue;
            if (n.matches('tr[data-name]')) rows.push(n);
            for (const r of n.querySelectorAll('tr[data-name]')) rows.push(r);
        }
        for (const r of rows) {
            window.__bench.changes.push({ name: r.dataset.name, state: r.dataset.state, at: now });
        }
    }
}).observe(document, { attributes: true, attributeFilter: ['data-console', 'data-state'], subtree: true, childList: true });
"#;

/// Sets `#filter` to `arguments[0]` and answers how long until exactly `arguments[1]` rows
/// are shown (ms, in the page).
const FILTER: &str = r#"
const [text, expected, done] = arguments;
const input = document.querySelector('#filter');
const shown = () => [...document.querySelectorAll('#containers tbody tr[data-name]')].filter(r => !r.hidden).length;
const t0 = performance.now();
input.value = text;
input.dispatchEvent(new Event('input', { bubbles: true }));
const check = () => {
    if (shown() === expected) { done(performance.now() - t0); return; }
    if (performance.now() - t0 > 20000) { done(null); return; }
    requestAnimationFrame(check);
};
check();
"#;

/// State changes measured (half stops, half starts).
const CHANGES: usize = 20;

pub fn run(artifacts: &Artifacts, quick: bool, figures: &mut Figures) -> anyhow::Result<()> {
    let containers = if quick { 200 } else { 1000 };
    let work = tempfile::tempdir()?;
    let dirs = Dirs::under(work.path())?;
    std::fs::copy(&artifacts.chaos, dirs.plugins.join("libchaos.so"))?;
    let config = write_config(work.path(), "balut.toml", containers, "")?;
    let host = Host::start(&artifacts.balut, &dirs, Some(&config))?;
    host.wait_ready(Duration::from_secs(120))?;
    let (running, listed) = host.running()?;
    ensure!(
        running == containers && listed == containers,
        "{running} of {listed} containers running, expected {containers}"
    );

    // The browser harness panics with what went wrong (a missing Chromium, a page that
    // never got ready): here that is this benchmark's error, not the end of the run.
    let measured = std::panic::catch_unwind(AssertUnwindSafe(|| measure(&host, containers)))
        .map_err(|panic| {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            anyhow!("the browser: {text}")
        })??;
    let Measured {
        ready,
        first_render,
        filter,
        mut changes,
        mut floor,
        mut in_page,
    } = measured;
    in_page.sort();
    changes.sort();
    floor.sort();
    println!(
        "console: {containers} containers: page ready {ready:.0} ms after navigation start; \
         first full render of the table {first_render:.1} ms; filter -> rows hidden {filter:.1} ms \
         (median of 5); state change -> its row p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms \
         ({} changes; its event on /v1/events to a plain client: p50 {:.1} ms, p90 {:.1} ms; to the page's \
         EventSource: p50 {:.1} ms, p90 {:.1} ms)",
        ms(percentile(&changes, 0.5)),
        ms(percentile(&changes, 0.9)),
        ms(percentile(&changes, 1.0)),
        changes.len(),
        ms(percentile(&floor, 0.5)),
        ms(percentile(&floor, 0.9)),
        ms(percentile(&in_page, 0.5)),
        ms(percentile(&in_page, 0.9)),
    );
    figures.add("console_ready_ms", ready);
    figures.add("console_first_render_ms", first_render);
    figures.add("console_filter_ms", filter);
    figures.add("console_event_to_row_p50_ms", ms(percentile(&changes, 0.5)));
    figures.add("console_event_to_row_p90_ms", ms(percentile(&changes, 0.9)));
    figures.add(
        "console_event_to_client_p50_ms",
        ms(percentile(&floor, 0.5)),
    );
    figures.add(
        "console_event_to_page_p50_ms",
        ms(percentile(&in_page, 0.5)),
    );
    host.terminate(Duration::from_secs(60))?;
    Ok(())
}

struct Measured {
    ready: f64,
    first_render: f64,
    filter: f64,
    changes: Vec<Duration>,
    floor: Vec<Duration>,
    in_page: Vec<Duration>,
}

fn measure(host: &Host, containers: usize) -> anyhow::Result<Measured> {
    let browser = Browser::start();
    browser.on_new_document(OBSERVER);
    browser.goto(&format!("http://{}/", host.addr));
    let ready = browser.wait(
        "html[data-console=ready]",
        "return window.__bench.readyAt;",
        Value::is_number,
    );
    let ready = ready.as_f64().context("readyAt")?;
    let rows = browser.js(
        "return document.querySelectorAll('#containers tbody tr[data-name]').length;",
        Vec::new(),
    );
    ensure!(
        rows.as_u64() == Some(containers as u64),
        "{rows} rows for {containers} containers"
    );
    let renders = browser.js(
        "return performance.getEntriesByName('balut:render:containers').map(e => e.duration);",
        Vec::new(),
    );
    let first_render = renders[0]
        .as_f64()
        .with_context(|| format!("no balut:render:containers measure: {renders}"))?;

    // Names, each then cleared: c12 matches c12 and c120..c129, and so on.
    let mut filters = Vec::new();
    for text in ["c12", "", "c7", "", "c345", "", "c99", "", "c5", ""] {
        let expected = (0..containers)
            .filter(|i| format!("c{i}").contains(text))
            .count();
        let took = browser.js_async(FILTER, vec![json!(text), json!(expected)]);
        let took = took
            .as_f64()
            .with_context(|| format!("filter {text:?}: {expected} rows never shown"))?;
        if !text.is_empty() {
            filters.push(took);
        }
    }

    // The same changes as a plain client of /v1/events sees them: the floor.
    let events = host.events()?;
    let mut changes = Vec::new();
    let mut floor = Vec::new();
    let mut in_page = Vec::new();
    for i in 0..CHANGES / 2 {
        let name = format!("c{}", i * 37 % containers);
        for (action, state) in [("stop", "stopped"), ("start", "running")] {
            let sent_at = Instant::now();
            let sent = epoch_ms();
            let status = host.post(&format!("/v1/containers/{name}/{action}"))?;
            ensure!(status == 200, "POST {action} {name}: {status}");
            let script = format!(
                "const c = window.__bench.changes.filter(c => c.name === {name:?} && c.state === {state:?} && c.at >= {sent}); return c.length ? c[0].at : null;"
            );
            let at = browser.wait(&format!("row {name} {state}"), &script, Value::is_number);
            let at = at.as_f64().context("a change time")?;
            changes.push(Duration::from_secs_f64(((at - sent) / 1e3).max(0.0)));
            let arrived = browser.js(&script.replace("changes", "arrivals"), Vec::new());
            let arrived = arrived
                .as_f64()
                .context("the state event never reached the page's EventSource")?;
            in_page.push(Duration::from_secs_f64(((arrived - sent) / 1e3).max(0.0)));
            loop {
                let (seen, event) = events
                    .recv_timeout(Duration::from_secs(30))
                    .with_context(|| format!("no {state} event of {name} on /v1/events"))?;
                if event["type"] == "state"
                    && event["container"] == name.as_str()
                    && event["to"] == state
                {
                    floor.push(seen.saturating_duration_since(sent_at));
                    break;
                }
            }
        }
    }
    Ok(Measured {
        ready,
        first_render,
        filter: median(filters),
        changes,
        floor,
        in_page,
    })
}

/// Milliseconds since the Unix epoch, with fractions (the page's
/// `performance.timeOrigin + performance.now()` is on the same clock).
fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}
