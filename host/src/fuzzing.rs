//! Entry points for the fuzz targets (`fuzz/`) and the property tests: each feeds arbitrary
//! input to one of the host's input handlers and panics only when one of the promises the
//! host makes about bad input is broken.
//!
//! - [`config_text`]: the config parser never panics and every refusal says why.
//! - [`plugin_file`]: the ELF checks never panic, and a file they accept carries a
//!   well-formed declaration.
//! - [`Api::check`]: a request to the real router (with a real supervisor behind it) never
//!   panics, never gets a 500, and every error is a JSON object with an `error` text.

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use tower::ServiceExt;

use crate::config::Config;
use crate::loader::{LoadError, elf};
use crate::platform::Real;
use crate::status::Board;
use crate::supervisor::{Settings, Supervisor};

/// Feeds `data` to the config parser.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(message) = Config::parse(text) {
        assert!(!message.trim().is_empty(), "empty error for {text:?}");
    }
}

/// Feeds `data`, as the content of a plugin file, to the checks made before opening it.
pub fn plugin_file(data: &[u8]) {
    match elf::inspect(data) {
        Ok(declaration) => {
            let name = declaration.name();
            assert!(
                !name.is_empty()
                    && name.bytes().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || c == b'-'
                        || c == b'_'),
                "accepted a declaration with the name {name:?}"
            );
        }
        Err(problem) => {
            let error = LoadError::from_elf(std::path::Path::new("fuzz.so"), data, problem);
            let message = error.to_string();
            assert!(
                message.contains("fuzz.so"),
                "{message:?} does not name the file"
            );
        }
    }
}

/// One request, as a client could send it.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    pub method: String,
    /// Path and query, e.g. `/v1/containers/web?x=1`.
    pub path: String,
    pub authorization: Option<String>,
    pub last_event_id: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// Send it to the router that requires a token ([`Api::TOKEN`]) for mutating requests.
    pub with_token: bool,
}

/// The real router over a real supervisor of an empty plugin folder, with one configured
/// container (`web`) whose plugin is absent, so control requests reach the supervisor.
pub struct Api {
    runtime: tokio::runtime::Runtime,
    open: Router,
    guarded: Router,
    _folder: tempfile::TempDir,
}

impl Api {
    /// The token of the guarded router.
    pub const TOKEN: &'static str = "fuzz-token";

    pub fn new() -> anyhow::Result<Self> {
        let folder = tempfile::tempdir()?;
        let plugin_dir = folder.path().join("plugins");
        std::fs::create_dir(&plugin_dir)?;
        let config_path = folder.path().join("balut.toml");
        let config_text = "[containers.web]\nplugin = \"absent\"\n";
        std::fs::write(&config_path, config_text)?;
        let config = Config::parse(config_text).map_err(anyhow::Error::msg)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let board = Board::default();
        let host = crate::api::HostInfo::new(&plugin_dir, Some(&config_path));
        let platform = Real::new(None, std::time::Duration::from_secs(10), None, false)?;
        let mut supervisor = Supervisor::new(
            Settings {
                plugin_dir: PathBuf::from(&plugin_dir),
                config,
                config_path: Some(config_path),
                strict_modes: false,
            },
            board.clone(),
            platform,
            0,
        );
        let handle = supervisor.handle();
        runtime.block_on(supervisor.start_all())?;
        runtime.spawn(supervisor.run());
        Ok(Self {
            open: crate::api::router(board.clone(), handle.clone(), None, host.clone()),
            guarded: crate::api::router(board, handle, Some(Self::TOKEN.to_owned()), host),
            runtime,
            _folder: folder,
        })
    }

    /// Sends `request` and checks the response; returns its status and headers. Requests
    /// no client could send (a method or URI that is not valid HTTP) are skipped (`None`).
    pub fn check(&self, request: &HttpRequest) -> Option<(StatusCode, HeaderMap)> {
        let Ok(method) = Method::from_bytes(request.method.as_bytes()) else {
            return None;
        };
        let mut builder = Request::builder().method(method.clone()).uri(&request.path);
        for (name, value) in [
            (header::AUTHORIZATION.as_str(), &request.authorization),
            ("last-event-id", &request.last_event_id),
            (header::CONTENT_TYPE.as_str(), &request.content_type),
        ] {
            if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                builder = builder.header(name, value);
            }
        }
        let Ok(built) = builder.body(Body::from(request.body.clone())) else {
            return None;
        };
        let router = if request.with_token {
            &self.guarded
        } else {
            &self.open
        };
        let what = format!("{method} {:?}", request.path);
        self.runtime.block_on(async {
            let response = match router.clone().oneshot(built).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let status = response.status();
            let headers = response.headers().clone();
            assert!(
                !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
                "{what}: {status}"
            );
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if content_type.starts_with("text/event-stream") || method == Method::HEAD {
                // An endless stream (its events are checked by the end-to-end tests), or
                // an answer that has no body by definition.
                return Some((status, headers));
            }
            let body = axum::body::to_bytes(response.into_body(), 64 << 20)
                .await
                .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
            if status.is_client_error() || status.is_server_error() {
                assert!(
                    content_type.starts_with("application/json"),
                    "{what}: {status} with content type {content_type:?}: {}",
                    String::from_utf8_lossy(&body)
                );
                let value: serde_json::Value = serde_json::from_slice(&body)
                    .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON: {e}"));
                // `/readyz` answers 503 with the readiness status itself.
                let text = if status == StatusCode::SERVICE_UNAVAILABLE {
                    value["error"].as_str().or(value["status"].as_str())
                } else {
                    value["error"].as_str()
                };
                assert!(
                    text.is_some_and(|e| !e.is_empty()),
                    "{what}: {status} without an error text: {value}"
                );
            } else if content_type.starts_with("application/json") {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON: {e}"));
            }
            Some((status, headers))
        })
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn api() -> &'static Api {
        static API: std::sync::OnceLock<Api> = std::sync::OnceLock::new();
        API.get_or_init(|| Api::new().expect("the API under test starts"))
    }

    /// Paths built from the API's own words, so most requests reach a handler.
    fn path() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just("v1".to_owned()),
            Just("containers".to_owned()),
            Just("web".to_owned()),
            Just("plugins".to_owned()),
            Just("events".to_owned()),
            Just("reload".to_owned()),
            Just("start".to_owned()),
            Just("stop".to_owned()),
            Just("restart".to_owned()),
            Just("healthz".to_owned()),
            Just("readyz".to_owned()),
            Just("metrics".to_owned()),
            Just("..".to_owned()),
            Just("%2F".to_owned()),
            Just("%FF%FE".to_owned()),
            Just("%".to_owned()),
            Just(String::new()),
            "[a-zA-Z0-9%._~-]{1,12}",
            any::<String>(),
        ];
        let query = prop_oneof![
            Just(String::new()),
            Just("?since=0".to_owned()),
            Just("?since=-1".to_owned()),
            Just("?since=x".to_owned()),
            Just("?since=99999999999999999999999".to_owned()),
            "\\?[a-z=&%0-9]{0,20}",
        ];
        let name = prop_oneof![
            Just("web".to_owned()),
            Just("%FF%FE".to_owned()),
            Just("a%2Fb".to_owned()),
            Just("..".to_owned()),
            "[a-zA-Z0-9%._~-]{0,300}",
        ];
        let route = prop_oneof![
            Just("/v1/containers/{}"),
            Just("/v1/containers/{}/start"),
            Just("/v1/containers/{}/stop"),
            Just("/v1/containers/{}/restart"),
            Just("/v1/{}"),
            Just("/{}"),
        ];
        prop_oneof![
            (prop::collection::vec(segment, 0..6), query.clone())
                .prop_map(|(segments, query)| format!("/{}{query}", segments.join("/"))),
            (route, name, query).prop_map(|(route, name, query)| {
                format!("{}{query}", route.replace("{}", &name))
            }),
        ]
    }

    fn request() -> impl Strategy<Value = HttpRequest> {
        let method = prop_oneof![
            Just("GET".to_owned()),
            Just("POST".to_owned()),
            Just("PUT".to_owned()),
            Just("DELETE".to_owned()),
            Just("HEAD".to_owned()),
            Just("OPTIONS".to_owned()),
            Just("PATCH".to_owned()),
            "[A-Z]{1,8}",
        ];
        let authorization = prop::option::of(prop_oneof![
            Just(format!("Bearer {}", Api::TOKEN)),
            Just("Bearer ".to_owned()),
            Just("Basic Zm9vOmJhcg==".to_owned()),
            any::<String>(),
        ]);
        let content_type = prop::option::of(prop_oneof![
            Just("application/json".to_owned()),
            Just("text/plain".to_owned()),
            any::<String>(),
        ]);
        let body = prop_oneof![
            Just(Vec::new()),
            Just(b"{\"name\": ".to_vec()),
            prop::collection::vec(any::<u8>(), 0..256),
        ];
        (
            method,
            path(),
            authorization,
            prop::option::of("[0-9a-z -]{0,24}"),
            content_type,
            body,
            any::<bool>(),
        )
            .prop_map(
                |(method, path, authorization, last_event_id, content_type, body, with_token)| {
                    HttpRequest {
                        method,
                        path,
                        authorization,
                        last_event_id,
                        content_type,
                        body,
                        with_token,
                    }
                },
            )
    }

    /// The fuzzer's seed plugin file (`fuzz/seeds/make-plugin-seed.sh`): the smallest file
    /// the checks accept.
    const TINY_PLUGIN: &[u8] = include_bytes!("../../fuzz/seeds/plugin_file/tiny.so");

    #[test]
    fn the_seed_plugin_file_is_accepted() {
        let declaration = elf::inspect(TINY_PLUGIN).expect("the seed is accepted");
        assert_eq!((declaration.name(), declaration.version()), ("tiny", "0.1"));
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let (status, headers) = api()
            .check(&HttpRequest {
                method: "DELETE".to_owned(),
                path: "/v1/containers/web".to_owned(),
                ..HttpRequest::default()
            })
            .expect("a valid request is answered");
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let allow = headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .expect("an Allow header");
        assert!(allow.contains("GET"), "{allow}");
    }

    /// Requests that extractors refuse before a handler runs.
    #[test]
    fn refused_by_extractors() {
        for path in [
            "/v1/containers/%FF%FE",
            "/v1/containers/%FF/start",
            "/v1/events?since=x",
            "/v1/events?since=-1",
        ] {
            for (method, with_token) in [("GET", false), ("POST", false), ("POST", true)] {
                api().check(&HttpRequest {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    with_token,
                    ..HttpRequest::default()
                });
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn plugin_file_with_byte_flips(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        ) {
            let mut bytes = TINY_PLUGIN.to_vec();
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            plugin_file(&bytes);
        }

        #[test]
        fn any_request_gets_an_answer_and_errors_are_json(request in request()) {
            api().check(&request);
        }
    }
}
