//! The calls that end one instance, apart from the supervisor's state, so several can end
//! at once (a shutdown stops independent containers together): stop (optionally), the
//! state a stop-first reload hands over, drop, and the end of its thread or process. What
//! it came to is recorded by `Supervisor::record_end`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::set::Instance;
use crate::loader::CallError;
use crate::platform::Calls;
use crate::services::Handover;

/// How ending an instance went.
pub(super) struct Ended<L> {
    /// The first problem (`stop failed: ...`, `drop panicked: ...`, `its thread did not
    /// end: ...`).
    pub problem: Option<String>,
    /// What it handed over after its stop, when asked to.
    pub state: Option<Handover>,
    /// Its generation and why it stays loaded, when its thread did not end.
    pub pinned: Option<(Arc<L>, String)>,
    /// Its process, when isolated.
    pub pid: Option<u32>,
}

/// Ends `instance` of container `name` within `timeout`: its probes, stop (if
/// `call_stop`), hand-over (if `keep_state` and the stop went well), drop, and the end of
/// its thread or process.
pub(super) async fn end_instance<W: Calls>(
    name: &str,
    mut instance: Instance<W>,
    call_stop: bool,
    keep_state: bool,
    timeout: Duration,
) -> Ended<W::Library> {
    if let Some(task) = instance.probe_task.take() {
        task.abort();
        let _ = task.await;
    }
    instance.services.request_stop();
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut problem = None;
    // A process that ended on its own (its failure already says how) gets no calls.
    let call_stop = call_stop && !instance.worker.has_ended();
    let stop_failed = |e: CallError| {
        Some(if e.is_stuck() {
            format!("stuck in stop: {e}")
        } else {
            format!("stop failed: {e}")
        })
    };
    let mut state = None;
    let dispose = if call_stop && !keep_state {
        // Drop follows stop whatever stop did, and nothing follows drop, so both are
        // queued at once (in this order: `join` polls its futures in order) and the queue
        // closed behind them: the thread runs them and ends in one wake-up, where a call
        // at a time took three (a shutdown of a thousand containers wakes each once).
        let (stopped, disposed, ()) = futures_util::future::join3(
            instance.worker.stop(left()),
            instance.worker.dispose(left()),
            async { instance.worker.no_more_calls() },
        )
        .await;
        problem = stopped.err().and_then(stop_failed);
        disposed
    } else {
        if call_stop {
            if let Err(e) = instance.worker.stop(left()).await {
                problem = stop_failed(e);
            }
        }
        if keep_state && problem.is_none() {
            match instance.worker.handover(left()).await {
                Ok(handed) => state = handed,
                Err(e) => {
                    warn!(container = %name, error = %e, "its state could not be handed over; the next instance starts without it");
                }
            }
        }
        match instance.worker.has_ended() {
            true => Ok(()),
            false => instance.worker.dispose(left()).await,
        }
    };
    if let Err(e) = dispose {
        if !matches!(e, CallError::Stuck) || problem.is_none() {
            // `drop panicked: ...`, `drop stuck: ...`, `drop failed: ...`.
            problem.get_or_insert(match e {
                CallError::Failed(_) | CallError::Ended(_) => format!("drop failed: {e}"),
                other => format!("drop {other}"),
            });
        }
    }
    let library = instance.worker.library().clone();
    let pid = instance.worker.pid();
    let finished = match Arc::try_unwrap(instance.worker) {
        Ok(worker) => worker.finish(left()).await.map_err(|e| e.to_string()),
        Err(_) => Err("its thread is still referenced".to_owned()),
    };
    let mut pinned = None;
    if let Err(e) = finished {
        let reason =
            format!("container `{name}`: its thread did not end ({e}); the library stays loaded");
        pinned = Some((library, reason));
        problem.get_or_insert(format!("its thread did not end: {e}"));
    }
    Ended {
        problem,
        state,
        pinned,
        pid,
    }
}
