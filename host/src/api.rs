//! The HTTP API: status reads from the [`Board`], control requests go to the supervisor.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{StreamExt, stream};
use serde::Deserialize;
use serde_json::json;
use tokio_stream::wrappers::BroadcastStream;

use crate::events::Event;
use crate::status::{Board, State as ContainerState};
use crate::supervisor::{ControlError, SupervisorHandle};

#[derive(Clone)]
struct AppState {
    board: Board,
    supervisor: SupervisorHandle,
}

/// The routes under `/v1`, plus JSON 404s for everything else.
pub fn router(board: Board, supervisor: SupervisorHandle) -> Router {
    Router::new()
        .route("/v1/containers", get(list_containers))
        .route("/v1/containers/{name}", get(get_container))
        .route("/v1/containers/{name}/start", post(start_container))
        .route("/v1/containers/{name}/stop", post(stop_container))
        .route("/v1/containers/{name}/restart", post(restart_container))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/events", get(events))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(AppState { board, supervisor })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn list_containers(State(app): State<AppState>) -> Response {
    let board = app.board.read();
    Json(json!({ "containers": board.containers })).into_response()
}

async fn get_container(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    match app.board.container(&name) {
        Some(status) => Json(status).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no container named `{name}`"),
        ),
    }
}

async fn list_plugins(State(app): State<AppState>) -> Response {
    let board = app.board.read();
    Json(json!({ "plugins": board.plugins, "not_unloaded": board.not_unloaded })).into_response()
}

fn control_response(result: Result<crate::status::ContainerStatus, ControlError>) -> Response {
    match result {
        Ok(status) => Json(status).into_response(),
        Err(e @ ControlError::UnknownContainer(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ControlError::ShuttingDown) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

async fn start_container(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    control_response(app.supervisor.start(&name).await)
}

async fn stop_container(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    control_response(app.supervisor.stop(&name).await)
}

async fn restart_container(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    control_response(app.supervisor.restart(&name).await)
}

/// `GET /healthz`: the host is alive and serving.
async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: 200 when every container that should run is running and ready; 503 with
/// the ones that are not. Containers stopped on purpose do not count.
async fn readyz(State(app): State<AppState>) -> Response {
    let board = app.board.read();
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
    let rendered = app.board.metrics.render(&app.board.read());
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
/// slow to keep up is disconnected and resumes the same way.
async fn events(
    State(app): State<AppState>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
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
