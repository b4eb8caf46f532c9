//! `GET /metrics`: a real host scraped and parsed as Prometheus text.

use std::collections::HashMap;
use std::io;

use balut_tests::{Host, Lib, PluginDir, STATE_TIMEOUT};
use prometheus_parse::{Scrape, Value};

use crate::{echo_entry, terminate_cleanly};

/// Scrapes `/metrics` and parses it.
fn scrape_metrics(host: &Host) -> (Scrape, String) {
    let (status, content_type, text) = host.get_text("/metrics");
    assert_eq!(status, 200, "GET /metrics: {text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "content type {content_type:?}"
    );
    let lines = text.lines().map(|l| Ok::<_, io::Error>(l.to_owned()));
    let parsed =
        Scrape::parse(lines).unwrap_or_else(|e| panic!("unparsable metrics ({e}):\n{text}"));
    (parsed, text)
}

/// The value of the sample `name` whose labels include `labels` (a histogram's `_count`
/// and `_sum` are plain samples too).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .and_then(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
            _ => None,
        })
}

fn must(scrape: &Scrape, text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{text}"))
}

#[test]
fn metrics_count_states_loads_restarts_probes_and_unloads() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho, Lib::Chaos]);
    let probe = "liveness = { period_ms = 100, grace_ms = 0 }\n";
    dir.write_config(&format!(
        "{}{probe}{}{probe}\
         [containers.flaky]\nplugin = \"chaos\"\nconfig = {{ fail_start = true }}\n\
         backoff = {{ initial_ms = 600000 }}\n",
        echo_entry("web1", "one"),
        echo_entry("web2", "two"),
    ));
    let host = Host::start(&dir);
    host.wait_state("web1", "running", STATE_TIMEOUT);
    host.wait_state("web2", "running", STATE_TIMEOUT);
    // The first retry is immediate, the second waits ten minutes.
    host.wait_state("flaky", "backoff", STATE_TIMEOUT);

    let (scrape, text) = host.wait_until("liveness probes in the metrics", STATE_TIMEOUT, |host| {
        let (scrape, text) = scrape_metrics(host);
        let probes = value(
            &scrape,
            "balut_probe_duration_seconds_count",
            &[("probe", "liveness")],
        );
        probes.is_some_and(|n| n >= 2.0).then_some((scrape, text))
    });

    for family in [
        "balut_containers",
        "balut_libraries_not_unloaded",
        "balut_container_restarts",
        "balut_probe_duration_seconds",
        "balut_library_loads",
        "balut_library_load_duration_seconds",
        "balut_plugin_reloads",
        "balut_library_unloads",
    ] {
        assert!(
            scrape.docs.contains_key(family),
            "no family {family}:\n{text}"
        );
    }
    let state = |s| must(&scrape, &text, "balut_containers", &[("state", s)]);
    assert_eq!(state("running"), 2.0, "{text}");
    assert_eq!(state("backoff"), 1.0, "{text}");
    assert_eq!(state("failed"), 0.0, "{text}");
    assert_eq!(state("quarantined"), 0.0, "{text}");
    assert!(
        must(
            &scrape,
            &text,
            "balut_container_restarts_total",
            &[("container", "flaky")]
        ) >= 1.0,
        "{text}"
    );
    // Counters start at 0 for every registered container.
    let web1_restarts = must(
        &scrape,
        &text,
        "balut_container_restarts_total",
        &[("container", "web1")],
    );
    assert_eq!(web1_restarts, 0.0, "{text}");
    // Both files loaded at least once (chaos again for its immediate retry).
    let loads = must(&scrape, &text, "balut_library_loads_total", &[]);
    assert!(loads >= 2.0, "{text}");
    assert_eq!(
        must(
            &scrape,
            &text,
            "balut_library_load_duration_seconds_count",
            &[]
        ),
        loads + must(&scrape, &text, "balut_library_load_failures_total", &[]),
        "{text}"
    );
    let load_seconds = must(
        &scrape,
        &text,
        "balut_library_load_duration_seconds_sum",
        &[],
    );
    assert!(load_seconds > 0.0 && load_seconds < 60.0, "{text}");
    let probe_seconds = must(
        &scrape,
        &text,
        "balut_probe_duration_seconds_sum",
        &[("probe", "liveness")],
    );
    assert!((0.0..10.0).contains(&probe_seconds), "{text}");
    assert!(
        must(
            &scrape,
            &text,
            "balut_probes_total",
            &[("probe", "liveness"), ("result", "ok")]
        ) >= 2.0,
        "{text}"
    );
    assert_eq!(
        must(&scrape, &text, "balut_libraries_not_unloaded", &[]),
        0.0
    );
    // The buckets parse as a histogram.
    let buckets = scrape
        .samples
        .iter()
        .find(|s| s.metric == "balut_library_load_duration_seconds")
        .map(|s| s.value.clone());
    assert!(
        matches!(&buckets, Some(Value::Histogram(b)) if b.len() > 5),
        "{buckets:?}\n{text}"
    );

    // Stopping both echo containers unloads their library.
    let before = must(&scrape, &text, "balut_library_unloads_total", &[]);
    for name in ["web1", "web2"] {
        let (status, body) = host.post(&format!("/v1/containers/{name}/stop"));
        assert_eq!(status, 200, "{body}");
    }
    let counts: HashMap<&str, f64> = host.wait_until("an unload counted", STATE_TIMEOUT, |host| {
        let (scrape, _) = scrape_metrics(host);
        if value(&scrape, "balut_library_unloads_total", &[])? <= before {
            return None;
        }
        Some(HashMap::from([
            (
                "running",
                value(&scrape, "balut_containers", &[("state", "running")])?,
            ),
            (
                "stopped",
                value(&scrape, "balut_containers", &[("state", "stopped")])?,
            ),
        ]))
    });
    assert_eq!(counts["running"], 0.0, "{counts:?}");
    assert_eq!(counts["stopped"], 2.0, "{counts:?}");
    terminate_cleanly(host);
}
