//! Observing a host: the event stream (`GET /v1/events`, SSE with ids and `Last-Event-ID`
//! resume), the transition history of `GET /v1/containers/{name}`, `/healthz` and
//! `/readyz`, `balut events` and `--log-format json`.

use std::time::Duration;

use balut_tests::{BalutProcess, Host, Lib, PluginDir, STATE_TIMEOUT, SseEvent};
use serde_json::Value;

use crate::{chaos_entry, is_rfc3339, terminate_cleanly};

/// A host with the chaos library and one never-restarted chaos container per name (no
/// faults), each waited for until running and ready.
fn chaos_host(names: &[&str]) -> (PluginDir, Host) {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    let config: String = names.iter().map(|n| chaos_entry(n, "")).collect();
    dir.write_config(&config);
    let host = Host::start(&dir);
    for name in names {
        wait_ready(&host, name);
    }
    (dir, host)
}

fn wait_ready(host: &Host, name: &str) {
    host.wait_until(
        &format!("container {name:?} to be running and ready"),
        STATE_TIMEOUT,
        |h| {
            h.find_container(name)
                .filter(|c| c["state"] == "running" && c["ready"] == true)
        },
    );
}

/// The ids of `events`, from their data (checked against their `id:` lines).
fn ids(events: &[SseEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            assert_eq!(e.id, Some(e.data_id()), "`id:` differs from data: {e:?}");
            e.data_id()
        })
        .collect()
}

/// Asserts that `ids` go up by exactly one each.
fn assert_contiguous(ids: &[u64], what: &str) {
    for pair in ids.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "{what}: ids must go up by one, without gaps or repeats: {ids:?}"
        );
    }
}

/// `(from, to)` of the `state` events of `container` among `events`.
fn transitions(events: &[SseEvent], container: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.is_state_of(container))
        .map(SseEvent::transition)
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Every kept event, from a fresh `?since=0` connection, read until nothing more comes.
fn all_kept(host: &Host) -> Vec<SseEvent> {
    let stream = host.events_at("/v1/events?since=0");
    stream.drain(Duration::from_millis(500))
}

const STOP_START: &[(&str, &str)] = &[
    ("running", "stopping"),
    ("stopping", "stopped"),
    ("stopped", "starting"),
    ("starting", "running"),
];

#[test]
fn event_stream_delivers_a_stop_and_start_in_order() {
    let (_dir, host) = chaos_host(&["a", "b"]);
    let before = all_kept(&host);
    let last_before = *ids(&before).last().expect("startup made events");

    let stream = host.events(None);
    assert!(
        stream
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "content type: {:?}",
        stream.headers
    );
    let (status, body) = host.post("/v1/containers/a/stop");
    assert_eq!(
        (status, &body["state"]),
        (200, &Value::from("stopped")),
        "{body}"
    );
    let (status, body) = host.post("/v1/containers/a/start");
    assert_eq!(
        (status, &body["state"]),
        (200, &Value::from("running")),
        "{body}"
    );
    let mut got = stream.until("a: starting -> running", STATE_TIMEOUT, |e| {
        e.is_state_of("a") && e.data["to"] == "running"
    });
    // A readiness event may follow the transition to running.
    got.extend(stream.drain(Duration::from_millis(300)));

    let got_ids = ids(&got);
    assert!(
        got_ids[0] > last_before,
        "a client without Last-Event-ID gets only new events: first {} after {last_before} kept",
        got_ids[0]
    );
    assert_contiguous(&got_ids, "live events");
    assert_eq!(transitions(&got, "a"), pairs(STOP_START), "{got:#?}");
    assert!(
        transitions(&got, "b").is_empty(),
        "b was not touched: {got:#?}"
    );
    for e in &got {
        assert_eq!(
            e.event.as_deref(),
            Some(e.kind()),
            "`event:` is the type: {e:?}"
        );
        let at = e.data["at"].as_str().unwrap_or_default();
        assert!(is_rfc3339(at), "`at` is RFC 3339: {e:?}");
        if e.kind() == "state" {
            for key in ["container", "from", "to"] {
                assert!(e.data[key].is_string(), "state event without {key}: {e:?}");
            }
            assert!(
                e.data.get("reason").is_some(),
                "state event without reason: {e:?}"
            );
        }
    }
    // The stream and the kept log agree.
    let kept = all_kept(&host);
    let kept_tail: Vec<&Value> = kept
        .iter()
        .filter(|e| e.data_id() >= got_ids[0])
        .map(|e| &e.data)
        .collect();
    let live: Vec<&Value> = got.iter().map(|e| &e.data).collect();
    assert_eq!(kept_tail, live, "replayed events equal the live ones");
    drop(stream);
    terminate_cleanly(host);
}

#[test]
fn event_stream_resumes_after_last_event_id_without_gaps_or_repeats() {
    let (_dir, host) = chaos_host(&["a", "b"]);
    let stream = host.events(None);
    let (status, body) = host.post("/v1/containers/a/stop");
    assert_eq!(status, 200, "{body}");
    // Read part of what happened, then go away.
    let first = stream.until("a: running -> stopping", STATE_TIMEOUT, |e| {
        e.is_state_of("a") && e.data["to"] == "stopping"
    });
    let last_seen = *ids(&first).last().expect("an event");
    stream.disconnect();

    // More happens while nobody listens.
    let (status, body) = host.post("/v1/containers/a/start");
    assert_eq!(status, 200, "{body}");
    let (status, body) = host.post("/v1/containers/b/restart");
    assert_eq!(status, 200, "{body}");
    wait_ready(&host, "a");
    wait_ready(&host, "b");

    let resumed = host.events(Some(last_seen));
    let mut got = resumed.until("b: starting -> running", STATE_TIMEOUT, |e| {
        e.is_state_of("b") && e.data["to"] == "running"
    });
    got.extend(resumed.drain(Duration::from_millis(300)));
    let got_ids = ids(&got);
    assert_eq!(
        got_ids.first(),
        Some(&(last_seen + 1)),
        "resuming after {last_seen} starts right after it: {got_ids:?}"
    );
    assert_contiguous(&got_ids, "resumed events");
    assert_eq!(
        transitions(&got, "a"),
        pairs(&STOP_START[1..]),
        "a's transitions after the last one seen: {got:#?}"
    );
    assert_eq!(
        transitions(&got, "b"),
        pairs(STOP_START),
        "b's restart: {got:#?}"
    );

    // Live events continue on the resumed connection, still in order.
    let (status, body) = host.post("/v1/containers/b/stop");
    assert_eq!(status, 200, "{body}");
    let more = resumed.until("b: stopping -> stopped", STATE_TIMEOUT, |e| {
        e.is_state_of("b") && e.data["to"] == "stopped"
    });
    let all: Vec<u64> = got_ids.iter().copied().chain(ids(&more)).collect();
    assert_contiguous(&all, "replayed then live events");
    drop(resumed);

    // `?since=ID` does the same as Last-Event-ID.
    let since = host.events_at(&format!("/v1/events?since={last_seen}"));
    let replay = since.until("the id reached before", STATE_TIMEOUT, |e| {
        e.data_id() == *all.last().expect("ids")
    });
    assert_eq!(ids(&replay), all, "?since={last_seen} replays the same ids");
    drop(since);
    terminate_cleanly(host);
}

#[test]
fn get_one_container_has_its_last_20_transitions() {
    let (_dir, host) = chaos_host(&["a"]);
    let a = host.get_json("/v1/containers/a");
    let history = a["history"].as_array().expect("a history array").clone();
    let last = history.last().unwrap_or_else(|| panic!("no history: {a}"));
    assert_eq!(last["to"], "running", "{a}");
    assert_eq!(
        last["at"], a["since"],
        "the last transition is when `since` began: {a}"
    );

    let (status, body) = host.post("/v1/containers/a/stop");
    assert_eq!(status, 200, "{body}");
    let (status, body) = host.post("/v1/containers/a/start");
    assert_eq!(status, 200, "{body}");
    let a = host.get_json("/v1/containers/a");
    let history = a["history"].as_array().expect("a history array").clone();
    let tail: Vec<(String, String)> = history[history.len() - 4..]
        .iter()
        .map(|t| {
            assert!(is_rfc3339(t["at"].as_str().unwrap_or_default()), "{t}");
            assert!(
                t.get("reason").is_some(),
                "a transition without reason: {t}"
            );
            let text = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (text("from"), text("to"))
        })
        .collect();
    assert_eq!(tail, pairs(STOP_START), "{a}");
    let ats: Vec<&str> = history.iter().filter_map(|t| t["at"].as_str()).collect();
    assert!(
        ats.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {ats:?}"
    );
    assert_eq!(history.last().map(|t| &t["at"]), Some(&a["since"]), "{a}");

    // Only the last 20 are kept.
    for _ in 0..6 {
        let (status, body) = host.post("/v1/containers/a/restart");
        assert_eq!(status, 200, "{body}");
    }
    let a = host.get_json("/v1/containers/a");
    let history = a["history"].as_array().expect("a history array").clone();
    assert_eq!(history.len(), 20, "{a}");
    // They are the newest: the same transitions as the last 20 state events of `a`.
    let kept = all_kept(&host);
    let from_events = transitions(&kept, "a");
    let from_history: Vec<(String, String)> = history
        .iter()
        .map(|t| {
            let text = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (text("from"), text("to"))
        })
        .collect();
    assert_eq!(
        from_history,
        from_events[from_events.len() - 20..].to_vec(),
        "history = the last 20 state events"
    );
    terminate_cleanly(host);
}

#[test]
fn healthz_is_ok_and_readyz_waits_for_a_requirement() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!(
        "{}{}requires = [\"db\"]\n",
        chaos_entry("db", "ready_after_ms = 2000"),
        chaos_entry("app", ""),
    ));
    let host = Host::start(&dir);
    let (status, body) = host.get("/healthz");
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));

    // While db is not ready, app waits: not ready.
    host.wait_state("app", "waiting", STATE_TIMEOUT);
    let (status, body) = host.get("/readyz");
    assert_eq!(status, 503, "{body}");
    let names: Vec<&str> = body["not_ready"]
        .as_array()
        .unwrap_or_else(|| panic!("no not_ready list: {body}"))
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(names.contains(&"app"), "app waits: {body}");
    assert!(names.contains(&"db"), "db is not ready yet: {body}");
    let app = body["not_ready"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "app")
        .cloned()
        .unwrap_or_default();
    assert_eq!(app["state"], "waiting", "{body}");
    assert_eq!(app["ready"], false, "{body}");
    let (status, body) = host.get("/healthz");
    assert_eq!(
        (status, &body["status"]),
        (200, &Value::from("ok")),
        "{body}"
    );

    // Once both run and are ready: 200.
    host.wait_for("/readyz to answer 200", STATE_TIMEOUT, |h| {
        h.get("/readyz").0 == 200
    });
    let (status, body) = host.get("/readyz");
    assert_eq!(
        (status, body),
        (200, serde_json::json!({"status": "ready"}))
    );
    assert_eq!(host.state("app"), "running");
    assert_eq!(host.state("db"), "running");

    // A container stopped on purpose does not make the host unready.
    let (status, body) = host.post("/v1/containers/app/stop");
    assert_eq!(status, 200, "{body}");
    let (status, body) = host.get("/readyz");
    assert_eq!(status, 200, "app was stopped on purpose: {body}");
    terminate_cleanly(host);
}

#[test]
fn readyz_is_503_while_a_container_failed() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!(
        "{}{}",
        chaos_entry("ok", ""),
        chaos_entry("broken", "fail_start = true"),
    ));
    let host = Host::start(&dir);
    host.wait_state("broken", "failed", STATE_TIMEOUT);
    wait_ready(&host, "ok");
    let (status, body) = host.get("/readyz");
    assert_eq!(status, 503, "{body}");
    let not_ready = body["not_ready"].as_array().cloned().unwrap_or_default();
    assert_eq!(not_ready.len(), 1, "only broken: {body}");
    assert_eq!(not_ready[0]["name"], "broken", "{body}");
    assert_eq!(not_ready[0]["state"], "failed", "{body}");
    let (status, body) = host.get("/healthz");
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
    terminate_cleanly(host);
}

#[test]
fn readyz_is_not_ready_before_the_containers_are_registered() {
    // Asked the moment the API listens, before the supervisor may have registered the
    // configured containers, readyz must not claim "ready" for a container that has not
    // started (it takes a second to start).
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&chaos_entry("slow", "start_delay_ms = 1000"));
    let host = Host::start(&dir);
    let (status, body) = host.get("/readyz");
    assert_eq!(
        status,
        503,
        "readyz before `slow` ran: {body}; containers: {:?}",
        host.containers()
    );
    host.wait_for("/readyz to answer 200", STATE_TIMEOUT, |h| {
        h.get("/readyz").0 == 200
    });
    terminate_cleanly(host);
}

#[test]
fn balut_events_prints_one_line_per_event() {
    let (_dir, host) = chaos_host(&["a"]);
    let addr = host.addr().to_string();
    let mut events = BalutProcess::spawn(["events", "--addr", &addr, "--since", "0"]);
    let lines = events.wait_stdout("the startup events", STATE_TIMEOUT, |lines| {
        lines
            .iter()
            .any(|l| l.contains(" state ") && l.contains("container=a") && l.contains("to=running"))
    });
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" loaded ") && l.contains("file=libchaos.so")),
        "the load of libchaos.so: {lines:#?}"
    );
    let mut previous = 0;
    for line in &lines {
        let mut words = line.split_whitespace();
        let id: u64 = words
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("a line starts with the id: {line:?}"));
        assert!(id > previous, "ids go up: {lines:#?}");
        previous = id;
        assert!(
            words.next().is_some_and(is_rfc3339),
            "then the time: {line:?}"
        );
        assert!(words.next().is_some(), "then the type: {line:?}");
    }
    let first_kept = ids(&all_kept(&host)).first().copied();
    assert_eq!(
        lines
            .first()
            .and_then(|l| l.split_whitespace().next())
            .and_then(|id| id.parse().ok()),
        first_kept,
        "--since 0 replays from the first event: {lines:#?}"
    );
    // Live events follow.
    let (status, body) = host.post("/v1/containers/a/stop");
    assert_eq!(status, 200, "{body}");
    events.wait_stdout("a live line for a's stop", STATE_TIMEOUT, |lines| {
        lines
            .iter()
            .any(|l| l.contains(" state ") && l.contains("container=a") && l.contains("to=stopped"))
    });
    assert!(events.is_running(), "balut events keeps running");
    drop(events);

    // --json: each line is the event's JSON.
    let mut json = BalutProcess::spawn(["events", "--addr", &addr, "--since", "0", "--json"]);
    let lines = json.wait_stdout("a's stop as JSON", STATE_TIMEOUT, |lines| {
        lines.iter().any(|l| l.contains("\"to\":\"stopped\""))
    });
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let ids: Vec<u64> = parsed.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(ids.len(), parsed.len(), "every event has an id: {lines:#?}");
    assert_contiguous(&ids, "balut events --json");
    assert_eq!(ids.first().copied(), first_kept, "{lines:#?}");
    assert!(
        parsed
            .iter()
            .all(|e| e["type"].is_string() && e["at"].is_string())
    );
    drop(json);
    terminate_cleanly(host);
}

#[test]
fn status_watch_redraws_on_events() {
    let (_dir, host) = chaos_host(&["a"]);
    let addr = host.addr().to_string();
    let mut watch = BalutProcess::spawn(["status", "--addr", &addr, "--watch"]);
    let row = |lines: &[String], state: &str| {
        lines.iter().any(|l| {
            l.split_whitespace().next() == Some("a") && l.split_whitespace().any(|w| w == state)
        })
    };
    watch.wait_stdout("a running in the table", STATE_TIMEOUT, |l| {
        row(l, "running")
    });
    let (status, body) = host.post("/v1/containers/a/stop");
    assert_eq!(status, 200, "{body}");
    let lines = watch.wait_stdout("a stopped in a redrawn table", STATE_TIMEOUT, |l| {
        row(l, "stopped")
    });
    assert!(
        lines.iter().filter(|l| l.contains("NAME")).count() >= 2,
        "the table is drawn again: {lines:#?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "no colour when stdout is not a terminal: {lines:#?}"
    );
    drop(watch);
    terminate_cleanly(host);
}

#[test]
fn json_log_lines_parse_and_carry_the_container() {
    let mut dir = PluginDir::with(&[Lib::Chaos]);
    dir.write_config(&format!("{}{}", chaos_entry("a", ""), chaos_entry("b", "")));
    let mut args = dir.run_args();
    args.extend(["--log-format".into(), "json".into()]);
    let host = Host::spawn_with(args, Some(dir.tmp()), &[]);
    wait_ready(&host, "a");
    wait_ready(&host, "b");
    let (status, body) = host.post("/v1/containers/a/restart");
    assert_eq!(status, 200, "{body}");
    // The plugin's own "started, idling" comes through the host's log as well.
    host.wait_log_where("a's second `started, idling`", STATE_TIMEOUT, |l| {
        l.contains("started, idling") && l.contains("\"a\"")
    });
    // A refused reload's error has newlines in it (a TOML snippet): still one JSON line.
    let config = dir.config().expect("a config").to_owned();
    std::fs::write(&config, "[containers.a\nplugin = \"chaos\"\n").expect("write the config");
    host.signal(balut_tests::Signal::SIGHUP);
    host.wait_log("config reload refused", STATE_TIMEOUT);
    let lines = host.log_lines();
    let mut parsed = Vec::new();
    for line in &lines {
        assert_eq!(line.stream, "stderr", "the log goes to stderr: {line:?}");
        let json: Value = serde_json::from_str(&line.text)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {:?}", line.text));
        assert!(json.is_object(), "{json}");
        assert!(json["message"].is_string(), "no message: {json}");
        assert!(json["level"].is_string(), "no level: {json}");
        assert!(json["timestamp"].is_string(), "no timestamp: {json}");
        parsed.push(json);
    }
    let with_message = |message: &str, container: &str| {
        parsed
            .iter()
            .any(|j| j["message"] == message && j["container"] == container)
    };
    for container in ["a", "b"] {
        assert!(
            with_message("container running", container),
            "a `container running` line with container {container:?}: {parsed:#?}"
        );
        assert!(
            with_message("started, idling", container),
            "the plugin's `started, idling` with container {container:?}: {parsed:#?}"
        );
    }
    assert!(with_message("container stopping", "a"), "{parsed:#?}");
    let refused = parsed
        .iter()
        .find(|j| j["message"] == "config reload refused")
        .unwrap_or_else(|| panic!("{parsed:#?}"));
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("TOML parse error") && error.ends_with("the old config stays in force"),
        "the whole error in one field: {refused}"
    );
    assert!(
        parsed
            .iter()
            .any(|j| j["message"] == "http api listening" && j["addr"].is_string()),
        "{parsed:#?}"
    );
    // A plugin's own fields are keys of its lines: chaos logs "created" with `config`.
    let created = parsed
        .iter()
        .find(|j| j["message"] == "created" && j["container"] == "a")
        .unwrap_or_else(|| panic!("no `created` line from chaos: {parsed:#?}"));
    assert!(
        created["config"]
            .as_str()
            .is_some_and(|c| c.starts_with("Config")),
        "the plugin's `config` field as a key: {created}"
    );
    assert!(created.get("plugin_fields").is_none(), "{created}");
    terminate_cleanly(host);
}

/// A client that comes back to a host restarted since (an upgrade, a crash, systemd's
/// `Restart=`) still has the old run's `Last-Event-ID`. It must get every event the new run
/// holds, not only those numbered above the old run's last.
#[test]
fn an_event_id_from_an_earlier_run_of_the_host_replays_all_of_this_run() {
    let (_first_dir, first) = chaos_host(&["a"]);
    for action in ["stop", "start", "restart"] {
        let (status, body) = first.post(&format!("/v1/containers/a/{action}"));
        assert_eq!(status, 200, "{action}: {body}");
    }
    wait_ready(&first, "a");
    let old_last = *ids(&all_kept(&first))
        .last()
        .expect("events of the first run");
    terminate_cleanly(first);

    let (_dir, host) = chaos_host(&["a"]);
    let kept = all_kept(&host);
    let kept_ids = ids(&kept);
    assert!(!kept_ids.is_empty(), "the second run has events");
    let resumed = host.events(Some(old_last));
    let replayed = ids(&resumed.drain(Duration::from_millis(500)));
    assert_eq!(
        replayed, kept_ids,
        "resuming with {old_last} (the first run's last id) replays all the second run holds"
    );
    // An id no run has given yet (the clock went back between runs) does the same.
    let ahead = kept_ids.last().expect("ids") + 1_000_000;
    let resumed = host.events(Some(ahead));
    let replayed = ids(&resumed.drain(Duration::from_millis(500)));
    assert_eq!(
        replayed, kept_ids,
        "resuming with {ahead}, ahead of this run"
    );
    terminate_cleanly(host);
}
