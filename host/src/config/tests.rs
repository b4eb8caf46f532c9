//! Unit tests of the config file: examples.

use super::*;

#[test]
fn parses_a_full_file_in_order() {
    let config = Config::parse(
        r#"
        [host]
        listen = "127.0.0.1:9000"
        stop_timeout_ms = 500

        [containers.web]
        plugin = "http-echo"
        config = { port = 8080, message = "hi" }

        [containers.alpha]
        plugin = "ticker"
        start_timeout_ms = 100
        "#,
    )
    .unwrap();
    assert_eq!(config.host.listen, Some("127.0.0.1:9000".parse().unwrap()));
    assert_eq!(
        config.host.stop_timeout_ms.duration(),
        Duration::from_millis(500)
    );
    assert_eq!(
        config.host.start_timeout_ms.duration(),
        Duration::from_secs(30)
    );
    let names: Vec<_> = config.containers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["web", "alpha"]);
    let web = &config.containers[0];
    assert_eq!(web.config_json(), r#"{"port":8080,"message":"hi"}"#);
    assert_eq!(config.containers[1].start_timeout_ms, Some(Millis(100)));
}

#[test]
fn requires_must_name_declared_containers_without_cycles() {
    let base =
        "[containers.a]\nplugin = \"x\"\n[containers.b]\nplugin = \"x\"\nrequires = [\"a\"]\n";
    assert!(Config::parse(base).is_ok());
    let err = Config::parse(&format!(
        "{base}[containers.c]\nplugin = \"x\"\nrequires = [\"nope\"]\n"
    ))
    .unwrap_err();
    assert!(
        err.contains("containers.c.requires") && err.contains("`nope`"),
        "{err}"
    );
    let err = Config::parse(
        "[containers.a]\nplugin = \"x\"\nrequires = [\"c\"]\n\
         [containers.b]\nplugin = \"x\"\nrequires = [\"a\"]\n\
         [containers.c]\nplugin = \"x\"\nrequires = [\"b\"]\n",
    )
    .unwrap_err();
    assert_eq!(err, "dependency cycle: a -> c -> b -> a");
}

#[test]
fn supervision_settings_parse_and_resolve() {
    let config = Config::parse(
        "[containers.a]\nplugin = \"x\"\nrestart = \"always\"\n\
         backoff = { initial_ms = 50, max_restarts = 2, jitter = 0.1 }\n\
         liveness = { period_ms = 100, failure_threshold = 2, grace_ms = 0 }\n",
    )
    .unwrap();
    let a = &config.containers[0];
    assert_eq!(a.restart, RestartPolicy::Always);
    let backoff = a.backoff.resolve();
    assert_eq!(backoff.initial, Duration::from_millis(50));
    assert_eq!(backoff.max_restarts, 2);
    assert_eq!(backoff.max, Duration::from_secs(60));
    assert_eq!(a.liveness.failure_threshold, Some(2));
    let err =
        Config::parse("[containers.a]\nplugin = \"x\"\nbackoff = { jitter = 2.0 }\n").unwrap_err();
    assert!(err.contains("between 0 and 1"), "{err}");
    let err =
        Config::parse("[containers.a]\nplugin = \"x\"\nrestart = \"sometimes\"\n").unwrap_err();
    assert!(err.contains("sometimes"), "{err}");
}

#[test]
fn empty_file_is_the_default() {
    assert_eq!(Config::parse("").unwrap(), Config::default());
}

#[test]
fn unknown_key_names_key_and_line() {
    let err = Config::parse("[host]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n").unwrap_err();
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("unknown field `bogus`"), "{err}");
}

#[test]
fn bad_values_are_errors_with_lines() {
    let err = Config::parse("[containers.web]\nplugin = \"x\"\nstop_timeout_ms = 0\n").unwrap_err();
    assert!(err.contains("line 3") && err.contains("positive"), "{err}");
    let err = Config::parse("[containers.\"a b\"]\nplugin = \"x\"\n").unwrap_err();
    assert!(err.contains("invalid container name"), "{err}");
    let err = Config::parse("[containers.web]\nconfig = {}\n").unwrap_err();
    assert!(err.contains("missing field `plugin`"), "{err}");
    let err = Config::parse("[host]\nlisten = \"nowhere\"\n").unwrap_err();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn api_limits_parse_with_defaults_and_bad_values_name_the_key() {
    let host = Config::parse("").unwrap().host;
    assert_eq!(
        host.api_header_timeout_ms.duration(),
        Duration::from_secs(10)
    );
    assert_eq!(host.api_max_connections.get(), 512);
    assert_eq!(host.api_send_timeout_ms.duration(), Duration::from_secs(30));
    assert_eq!(host.sse_client_buffer_bytes.get(), 64 * 1024);
    let host = Config::parse(
        "[host]\napi_header_timeout_ms = 500\napi_max_connections = 8\n\
         api_send_timeout_ms = 2000\nsse_client_buffer_bytes = 4096\n",
    )
    .unwrap()
    .host;
    assert_eq!(
        host.api_header_timeout_ms.duration(),
        Duration::from_millis(500)
    );
    assert_eq!(host.api_max_connections.get(), 8);
    assert_eq!(host.api_send_timeout_ms.duration(), Duration::from_secs(2));
    assert_eq!(host.sse_client_buffer_bytes.get(), 4096);
    for (text, says) in [
        ("api_header_timeout_ms = 0", "positive"),
        ("api_send_timeout_ms = 0", "positive"),
        ("api_max_connections = 0", "nonzero"),
        ("api_max_connections = -1", "invalid value"),
        ("sse_client_buffer_bytes = 100", "4 KiB"),
        ("sse_client_buffer_bytes = 99999999999", "16 MiB"),
    ] {
        let err = Config::parse(&format!("[host]\n{text}\n")).unwrap_err();
        let key = text.split(' ').next().unwrap_or_default();
        assert!(
            err.contains("line 2") && err.contains(key) && err.contains(says),
            "{text}: {err}"
        );
    }
}

#[test]
fn held_sockets_and_the_reload_mode_parse_with_clear_errors() {
    let config = Config::parse(
        "[containers.web]\nplugin = \"http-echo\"\nreload = \"stop-first\"\n\
         [containers.web.listen]\nhttp = \"127.0.0.1:8080\"\nadmin = \"unix:/run/web.sock\"\n",
    )
    .unwrap();
    let web = &config.containers[0];
    assert_eq!(web.reload, Some(ReloadMode::StopFirst));
    let names: Vec<&str> = web.listen.keys().map(SocketName::as_str).collect();
    assert_eq!(names, ["admin", "http"]);

    let err = Config::parse(
        "[containers.web]\nplugin = \"x\"\n[containers.web.listen]\nhttp = \"localhost:80\"\n",
    )
    .unwrap_err();
    assert!(
        err.contains("neither HOST:PORT") && err.contains("line 4"),
        "{err}"
    );

    let err = Config::parse(
        "[containers.a]\nplugin = \"x\"\nlisten = { http = \"127.0.0.1:80\" }\n\
         [containers.b]\nplugin = \"x\"\nlisten = { web = \"127.0.0.1:80\" }\n",
    )
    .unwrap_err();
    assert_eq!(
        err,
        "containers.b.listen.web: 127.0.0.1:80 is also containers.a.listen.http"
    );

    let err = Config::parse("[containers.a]\nplugin = \"x\"\nreload = \"later\"\n").unwrap_err();
    assert!(
        err.contains("overlap") && err.contains("stop-first"),
        "{err}"
    );
    let err =
        Config::parse("[containers.a]\nplugin = \"x\"\nlisten = { \"a b\" = \"127.0.0.1:80\" }\n")
            .unwrap_err();
    assert!(err.contains("socket name"), "{err}");
}

#[test]
fn a_memory_limit_needs_process_isolation_and_room_to_start() {
    let err = Config::parse("[containers.a]\nplugin = \"x\"\nmemory_max_bytes = 268435456\n")
        .unwrap_err();
    assert!(
        err.starts_with("containers.a.memory_max_bytes: a memory limit needs"),
        "{err}"
    );
    let err = Config::parse(
        "[containers.a]\nplugin = \"x\"\nisolation = \"process\"\nmemory_max_bytes = 1000\n",
    )
    .unwrap_err();
    assert!(err.contains("below the minimum"), "{err}");
    let ok = Config::parse(
        "[host]\nisolation = \"process\"\n[containers.a]\nplugin = \"x\"\nmemory_max_bytes = 268435456\n",
    );
    assert!(ok.is_ok(), "{ok:?}");
}
