//! Serving the API's routes on one listener (TCP or the Unix socket) within the limits of
//! [`ApiLimits`]: the request head must arrive within the header timeout (hyper's HTTP/1
//! connection with a timer), at most `max_connections` are held (`slots.rs`: the oldest
//! idle one makes room, else the new one gets 503), a client that takes nothing of what is
//! sent for the send timeout is dropped (`io.rs`), and an event stream's send buffer is
//! bounded.

mod io;
mod slots;

use std::convert::Infallible;
use std::future::Future;
use std::os::fd::AsFd;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_service::Service;
use tracing::{debug, warn};

use self::io::Guarded;
use self::slots::{Closed, InRequest, Slot, Slots, Ticket};
use crate::limits::ApiLimits;

/// How long requests still in progress at shutdown may take before their connections
/// are closed (event streams never end on their own).
const DRAIN: Duration = Duration::from_secs(1);

/// The connection a request came on, as a request extension: the event stream marks it,
/// which bounds its send buffer.
#[derive(Debug, Clone)]
pub struct Connection(Arc<Slot>);

impl Connection {
    /// This connection carries an event stream from now on.
    pub fn set_streaming(&self) {
        self.0.set_streaming();
    }
}

/// Serves `app` on `listener` until `stop` completes; then lets requests in progress
/// finish for up to a second and closes every connection. `name` names the listener in
/// log lines.
pub async fn serve<L>(
    mut listener: L,
    name: String,
    app: Router,
    limits: ApiLimits,
    metrics: Arc<crate::metrics::Metrics>,
    stop: impl Future<Output = ()>,
) where
    L: Listener,
    L::Io: AsFd,
{
    let slots = Arc::new(Slots::new(limits.max_connections, name, metrics));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let http = Arc::new(http);
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut stop = pin!(stop);
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        // Reap the connections that ended.
        while connections.try_join_next().is_some() {}
        match slots.admit() {
            Some(ticket) => {
                connections.spawn(connection(
                    io,
                    ticket,
                    slots.clone(),
                    http.clone(),
                    app.clone(),
                    limits,
                    drain_rx.clone(),
                ));
            }
            None => {
                refuse(&io, slots.max());
                slots.note(Closed::Refused);
            }
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        connections.shutdown().await;
    }
}

/// Serves one connection until it ends, is told to make room, or the shutdown's drain
/// ends it.
async fn connection<S>(
    io: S,
    ticket: Ticket,
    slots: Arc<Slots>,
    http: Arc<http1::Builder>,
    app: Router,
    limits: ApiLimits,
    mut drain: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + AsFd + Unpin + Send + 'static,
{
    let slot = ticket.slot().clone();
    let io = Guarded::new(io, slot.clone(), limits.send_timeout, limits.sse_buffer);
    let on = slot.clone();
    let ends = drain.clone();
    let service = hyper::service::service_fn(move |request| {
        handle(app.clone(), on.clone(), ends.clone(), request)
    });
    let mut conn = pin!(http.serve_connection(TokioIo::new(io), service));
    let mut draining = false;
    let ended = loop {
        tokio::select! {
            ended = conn.as_mut() => break ended,
            () = slot.evicted() => return,
            _ = drain.wait_for(|d| *d), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    match ended {
        Ok(()) => {}
        Err(_) if slot.is_stalled() => warn!(
            send_timeout_ms = limits.send_timeout.as_millis(),
            event_stream = slot.is_streaming(),
            "closed an API connection whose client took nothing of what was sent for \
             host.api_send_timeout_ms"
        ),
        // A keep-alive connection idle for the header timeout is closed the same way:
        // that is ordinary, only a first request that never came whole is counted.
        Err(e) if e.is_timeout() && !slot.has_served() => slots.note(Closed::HeaderTimeout),
        Err(e) => debug!(error = %e, "API connection ended"),
    }
    drop(ticket);
}

/// One request: the router's answer, its body holding the connection busy until sent.
async fn handle(
    mut app: Router,
    slot: Arc<Slot>,
    drain: watch::Receiver<bool>,
    request: Request<Incoming>,
) -> Result<Response<Tracked>, Infallible> {
    let busy = InRequest::new(slot.clone());
    let mut request = request.map(Body::new);
    request.extensions_mut().insert(Connection(slot.clone()));
    std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut app, cx)).await?;
    let response = app.call(request).await?;
    Ok(response.map(|body| Tracked {
        body,
        _busy: busy,
        slot,
        drain,
        ending: None,
    }))
}

/// A response body that keeps its connection counted as in a request until it is sent.
/// An event stream's body (its connection marked streaming) ends when the shutdown's
/// drain begins: its last chunk is sent and the client sees the stream end, where
/// cutting the connection after the drain would look like a network failure.
struct Tracked {
    body: Body,
    _busy: InRequest,
    slot: Arc<Slot>,
    drain: watch::Receiver<bool>,
    /// Resolves when the drain begins; made at the first poll of a stream's body.
    ending: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.slot.is_streaming() {
            let drain = &this.drain;
            let ending = this.ending.get_or_insert_with(|| {
                let mut drain = drain.clone();
                Box::pin(async move {
                    // A closed channel (the server gone) ends the stream too.
                    let _ = drain.wait_for(|draining| *draining).await;
                })
            });
            if ending.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Answers a connection over the cap with 503 if its socket takes the answer at once,
/// and closes it: it is never queued.
fn refuse(io: &impl AsFd, max: usize) {
    let body = format!(
        "{{\"error\":\"too many connections: this API listener serves at most {max} at once\"}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // The socket is non-blocking: what does not fit now is not sent.
    let _ = socket2::SockRef::from(io).send(response.as_bytes());
}
