//! The HTTP API: status reads from the [`Board`], control requests go to the supervisor.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::status::Board;
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
