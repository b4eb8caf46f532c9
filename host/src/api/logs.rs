//! `GET /v1/containers/{name}/logs`: a container's recent log lines as JSON lines
//! (`application/x-ndjson`), and with `?follow=1` the new ones as they come, on the same
//! chunked response.

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;

use super::{AppState, ContainerName, error, shown};
use crate::logs::LogLine;

/// The content type of the answer: one JSON object per line.
const NDJSON: &str = "application/x-ndjson";

#[derive(Debug, Deserialize)]
pub(super) struct LogsQuery {
    /// The last `n` lines kept (all of them, up to 1000, when absent).
    n: Option<usize>,
    /// `1` or `true`: after those, send each new line until the container is deregistered
    /// or the host stops.
    follow: Option<String>,
}

/// One line of the answer.
fn line_bytes(line: &LogLine) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(line)
        .unwrap_or_else(|e| format!("{{\"error\":\"serializing a log line: {e}\"}}").into_bytes());
    bytes.push(b'\n');
    bytes
}

fn lines_bytes(lines: &[Arc<LogLine>]) -> Bytes {
    Bytes::from(
        lines
            .iter()
            .flat_map(|l| line_bytes(l))
            .collect::<Vec<u8>>(),
    )
}

pub(super) async fn container_logs(
    State(app): State<AppState>,
    ContainerName(name): ContainerName,
    query: Result<Query<LogsQuery>, QueryRejection>,
    connection: Option<Extension<crate::http::Connection>>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let follow = match query.follow.as_deref() {
        None | Some("0" | "false") => false,
        Some("1" | "true" | "") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad follow value `{}`: 1 or 0", shown(other)),
            );
        }
    };
    if !app.board.read().containers.iter().any(|c| c.name == name) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no container named `{}`", shown(&name)),
        );
    }
    let log = app.board.logs.for_container(&name);
    let ndjson = [(header::CONTENT_TYPE, NDJSON)];
    if !follow {
        return (ndjson, lines_bytes(&log.last(query.n))).into_response();
    }
    // Its send buffer is bounded: a client that stops reading is dropped (`http/`).
    if let Some(Extension(connection)) = connection {
        connection.set_streaming();
    }
    let mut kept = log.subscribe();
    let (first, last_seq, closed) = {
        let kept = kept.borrow_and_update();
        (
            lines_bytes(&kept.last(query.n)),
            kept.last_seq(),
            kept.closed,
        )
    };
    let first = stream::once(async move { Ok::<_, std::convert::Infallible>(first) });
    // State: the receiver, the last line sent, and whether the buffer was closed.
    let live = stream::unfold(
        (kept, last_seq, closed),
        |(mut kept, mut last_seq, closed)| async move {
            if closed {
                return None;
            }
            loop {
                if kept.changed().await.is_err() {
                    return None;
                }
                let (new, closed) = {
                    let now = kept.borrow_and_update();
                    let new = now.after(last_seq);
                    last_seq = now.last_seq();
                    (new, now.closed)
                };
                if !new.is_empty() {
                    return Some((Ok(lines_bytes(&new)), (kept, last_seq, closed)));
                }
                if closed {
                    return None;
                }
            }
        },
    );
    (
        ndjson,
        Body::from_stream(futures_util::StreamExt::chain(first, live)),
    )
        .into_response()
}
