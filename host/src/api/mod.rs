//! The HTTP API: status reads from the [`Board`], control requests go to the supervisor.

mod console;
mod list;
mod logs;

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use futures_util::{StreamExt, stream};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_stream::wrappers::BroadcastStream;
use tracing::warn;

use crate::events::Event;
use crate::isolation::figures;
use crate::model::{ProcessFigures, State as ContainerState};
use crate::status::Board;
use crate::supervisor::{ControlError, ReloadError, SupervisorHandle};
pub use console::HostInfo;
use list::{ListCache, with_figures};

#[derive(Clone)]
struct AppState {
    board: Board,
    supervisor: SupervisorHandle,
    /// Mutating requests must bring it as `Authorization: Bearer TOKEN` when set.
    token: Option<Arc<str>>,
    /// The last rendering of the container list and the board version it shows.
    list_cache: Arc<Mutex<ListCache>>,
    /// What `GET /v1/host` tells.
    host: Arc<HostInfo>,
}

/// The largest request body the API accepts. No route reads a body; a client sending a
/// bigger one (by its `Content-Length`) gets 413 before any of it is read.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// The routes under `/v1`, `/healthz` and `/readyz`, the web console (`/`, `/ui/`), plus
/// JSON 404s for everything else, JSON 405s for a wrong method and 413s for big bodies.
pub fn router(
    board: Board,
    supervisor: SupervisorHandle,
    token: Option<String>,
    host: HostInfo,
) -> Router {
    let state = AppState {
        board,
        supervisor,
        token: token.map(Arc::from),
        list_cache: Arc::default(),
        host: Arc::new(host),
    };
    let control = Router::new()
        .route("/v1/containers/{name}/start", post(start_container))
        .route("/v1/containers/{name}/stop", post(stop_container))
        .route("/v1/containers/{name}/restart", post(restart_container))
        .route("/v1/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/v1/containers", get(list_containers))
        .route("/v1/containers/{name}", get(get_container))
        .route("/v1/containers/{name}/logs", get(logs::container_logs))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/events", get(events))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(control)
        .merge(console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(refuse_big_bodies))
        .with_state(state)
}

/// Lets a mutating request through only with the right bearer token (when one is set),
/// compared in constant time; otherwise 401 and a log line.
async fn require_token(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = &app.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::token::bearer)
        .unwrap_or("");
    // Digests first: `ct_eq` on slices of different lengths returns at once, which would
    // tell the token's length; digests are always 32 bytes.
    let digest = |token: &str| Sha256::digest(token.as_bytes());
    if bool::from(digest(given).ct_eq(&digest(expected))) {
        return next.run(request).await;
    }
    let why = if given.is_empty() { "missing" } else { "wrong" };
    warn!(method = %request.method(), path = %request.uri().path(), token = why, "refused an API request");
    error(StatusCode::UNAUTHORIZED, format!("{why} bearer token"))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// A name or path as error messages show it: at most 100 characters, then how long it was.
fn shown(text: &str) -> String {
    const MAX_CHARS: usize = 100;
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
        None => text.to_owned(),
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", shown(uri.path())),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", shown(uri.path())),
    )
}

/// Answers 413 to a request whose `Content-Length` exceeds [`MAX_BODY_BYTES`], without
/// reading the body.
async fn refuse_big_bodies(request: Request, next: Next) -> Response {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(length) if length > MAX_BODY_BYTES => {
            warn!(method = %request.method(), path = %shown(request.uri().path()), length, "refused a request body that is too large");
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body of {length} bytes to {} {} is too large: the API takes at most {MAX_BODY_BYTES}",
                    request.method(),
                    shown(request.uri().path())
                ),
            )
        }
        _ => next.run(request).await,
    }
}

/// The `{name}` of a container route. A name that is not valid percent-encoded UTF-8 gets
/// a JSON 400 naming the path (axum's own rejection is plain text).
struct ContainerName(String);

impl<S: Send + Sync> FromRequestParts<S> for ContainerName {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(Self(name)),
            Err(rejection) => Err(bad_name(&parts.uri, &rejection)),
        }
    }
}

fn bad_name(uri: &Uri, rejection: &PathRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!(
            "bad container name in {}: {}",
            shown(uri.path()),
            rejection.body_text()
        ),
    )
}

/// Serializes `value` to a JSON response (while the caller holds the board's read lock:
/// no copy of the status is made).
fn json_bytes(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("serializing the status: {e}"),
        ),
    }
}

/// `GET /v1/containers`, served from a rendering cached until the board changes: under
/// load most requests then cost a reference-count increment, and a change costs the
/// serialization of the containers that changed.
async fn list_containers(State(app): State<AppState>) -> Response {
    // One request renders while the others wait for its result rather than rendering too.
    let mut cache = app
        .list_cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let (version, board) = app.board.read_versioned();
    match cache.update(version, &board.containers) {
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/json")],
            cache.body.clone(),
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("serializing the status: {e}"),
        ),
    }
}

async fn get_container(
    State(app): State<AppState>,
    ContainerName(name): ContainerName,
) -> Response {
    let board = app.board.read();
    match board.containers.iter().find(|c| c.name == name) {
        Some(status) => json_bytes(&crate::model::ContainerDetail {
            status: &with_figures(status),
            probes: &status.probes,
            history: &status.history,
            config: status.config.as_deref(),
        }),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no container named `{}`", shown(&name)),
        ),
    }
}

async fn list_plugins(State(app): State<AppState>) -> Response {
    let board = app.board.read();
    Json(json!({
        "plugins": board.plugins,
        "not_unloaded": board.not_unloaded,
        "folder": board.folder,
    }))
    .into_response()
}

fn control_response(result: Result<crate::model::ContainerStatus, ControlError>) -> Response {
    match result {
        Ok(status) => Json(status).into_response(),
        Err(ControlError::UnknownContainer(name)) => error(
            StatusCode::NOT_FOUND,
            format!("no container named `{}`", shown(&name)),
        ),
        Err(e @ ControlError::ShuttingDown) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e @ ControlError::SupervisorFailed(_)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

async fn start_container(
    State(app): State<AppState>,
    ContainerName(name): ContainerName,
) -> Response {
    control_response(app.supervisor.start(&name).await)
}

async fn stop_container(
    State(app): State<AppState>,
    ContainerName(name): ContainerName,
) -> Response {
    control_response(app.supervisor.stop(&name).await)
}

async fn restart_container(
    State(app): State<AppState>,
    ContainerName(name): ContainerName,
) -> Response {
    control_response(app.supervisor.restart(&name).await)
}

/// `GET /healthz`: the host is alive and serving.
async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: 200 when the initial start is done and every container that should run
/// is running and ready; 503 with the ones that are not (or `starting` before that).
/// Containers stopped on purpose do not count.
async fn readyz(State(app): State<AppState>) -> Response {
    if !app.board.is_started() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting", "not_ready": [] })),
        )
            .into_response();
    }
    let board = app.board.read();
    if let Some(error) = &board.folder.error {
        // Without its folder the host cannot follow what it should run.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "plugin folder lost", "folder": board.folder, "error": error })),
        )
            .into_response();
    }
    let not_ready: Vec<serde_json::Value> = board
        .containers
        .iter()
        .filter(|c| {
            c.state != ContainerState::Stopped && !(c.state == ContainerState::Running && c.ready)
        })
        .map(|c| json!({ "name": c.name, "state": c.state, "ready": c.ready }))
        .collect();
    if not_ready.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "not_ready": not_ready })),
        )
            .into_response()
    }
}

/// The content type of the OpenMetrics text format `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`: Prometheus metrics in the OpenMetrics text format.
async fn metrics(State(app): State<AppState>) -> Response {
    let board = app.board.read();
    let processes: Vec<(&str, ProcessFigures)> = board
        .containers
        .iter()
        .filter_map(|c| Some((c.name.as_str(), figures::of(c.process?.pid)?)))
        .collect();
    let rendered = app.board.metrics.render(&board, &processes);
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the metrics: {e}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Replay the kept events after this id (like `Last-Event-ID`); `0` for all kept.
    since: Option<u64>,
}

/// `GET /v1/events`: Server-Sent Events, one per transition, load, unload, reload,
/// rollback, readiness or health change, with ids. A client reconnecting with
/// `Last-Event-ID` (or `?since=ID`) first gets the kept events after that id. A client too
/// slow to keep up (more than the kept events behind, or its send buffer full for
/// `host.api_send_timeout_ms`) is disconnected and resumes the same way.
async fn events(
    State(app): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
    connection: Option<Extension<crate::http::Connection>>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    // Its send buffer is bounded: a client that stops reading is dropped (`http/`).
    if let Some(Extension(connection)) = connection {
        connection.set_streaming();
    }
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(query.since)
        .unwrap_or_else(|| app.board.events.last_id());
    let (past, live) = app.board.events.subscribe(last_id);
    let live = BroadcastStream::new(live)
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(|item| std::future::ready(item.ok()));
    let stream = stream::iter(past).chain(live).map(to_sse);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn to_sse(event: Event) -> Result<SseEvent, Infallible> {
    let kind = serde_json::to_value(&event)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let data = serde_json::to_string(&event).unwrap_or_default();
    Ok(SseEvent::default()
        .id(event.id.to_string())
        .event(kind)
        .data(data))
}

/// `POST /v1/reload`: reads the config file again; 200 with what changed, 400 with why the
/// new file was refused (the old one stays in force), 422 when a plugin's own config type
/// refused a container's config (each error names its key path).
async fn reload(State(app): State<AppState>) -> Response {
    match app.supervisor.reload().await {
        Ok(report) => Json(report).into_response(),
        Err(e @ ReloadError::ConfigRefused(_)) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Err(e @ (ReloadError::Invalid(_) | ReloadError::NoConfigFile)) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e @ ReloadError::Unavailable(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}
