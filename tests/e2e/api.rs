//! The HTTP API's edges.

use balut_tests::{EXIT_TIMEOUT, Host, Lib, PluginDir, STATE_TIMEOUT, Signal};

use crate::echo_entry;

#[test]
fn unknown_container_is_404_with_an_error() {
    let mut dir = PluginDir::with(&[Lib::HttpEcho]);
    dir.write_config(&echo_entry("http-echo", "x"));
    let mut host = Host::start(&dir);
    host.wait_state("http-echo", "running", STATE_TIMEOUT);
    for action in ["stop", "start"] {
        let (status, body) = host.post(&format!("/v1/containers/nope/{action}"));
        assert_eq!(status, 404, "{action}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{action}: {body}"
        );
    }
    // Stopping a stopped container and starting a running one are harmless.
    let (status, body) = host.post("/v1/containers/http-echo/start");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "running", "{body}");
    assert_eq!(host.state("http-echo"), "running");
    host.signal(Signal::SIGTERM);
    assert_eq!(
        host.wait_exit(EXIT_TIMEOUT).code(),
        Some(0),
        "{}",
        host.logs()
    );
}
