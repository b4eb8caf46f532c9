//! Making an instance, and the overlapping replacement of a live one.
//!
//! [`Supervisor::prepare_instance`] gives a container's next instance everything but its
//! calls: its held sockets (bound on first use, `sockets.rs`), its worker (a thread, or a
//! process spawned ahead by a swap), its `Context` with what the previous instance handed
//! over.
//!
//! [`Supervisor::overlap`] replaces a running instance without a gap (`reload =
//! "overlap"`, the default for containers with held sockets): the old instance hands its
//! state over and keeps serving; the new one is constructed, started and waited for until
//! ready, on the same sockets; only then does it take the old one's place, and the old one
//! is stopped (it drains). If the new one fails at any step, it is torn down and the old
//! one never noticed: nothing was stopped, so there is nothing to roll back.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Supervisor;
use super::set::Instance;
use crate::events::EventKind;
use crate::loader::CallError;
use crate::model::{Isolation, ProcessFigures, State, rfc3339};
use crate::platform::{Calls, Generation, Platform, file_name};
use crate::services::{Handover, HostServices};

/// How often readiness is looked at while a new instance comes up beside the old one.
const READY_POLL: Duration = Duration::from_millis(5);

impl<P: Platform> Supervisor<P> {
    /// The next instance of `name` on `library`, not yet constructed.
    pub(super) fn prepare_instance(
        &mut self,
        name: &str,
        library: &Arc<P::Library>,
        handover: Option<Handover>,
    ) -> Result<Instance<P::Worker>, String> {
        let (wanted, confinement) = self
            .containers
            .get(name)
            .map(|c| (c.spec.listen.clone(), c.spec.confinement))
            .unwrap_or_default();
        let listeners = self.sockets.ensure(name, &wanted)?;
        let handover = handover.or_else(|| self.handed_over.remove(name));
        let spare = self
            .spares
            .remove(name)
            .filter(|w| Arc::ptr_eq(w.library(), library));
        let worker = match spare {
            Some(worker) => worker,
            None => self
                .platform
                .spawn(name, library.clone(), &confinement, &listeners)
                .map_err(|e| {
                    let what = match confinement.isolation {
                        Isolation::Thread => "its thread",
                        Isolation::Process => "its process",
                    };
                    format!("cannot start {what}: {e}")
                })?,
        };
        self.next_instance += 1;
        let generation = library.generation();
        let services = HostServices::new(
            name,
            generation,
            self.next_instance,
            self.inbox.notice_sender.clone(),
        )
        .with_listeners(listeners)
        .with_handover(handover)
        .with_recent_log(self.board.logs.for_container(name));
        Ok(Instance {
            id: self.next_instance,
            generation,
            worker: Arc::new(worker),
            services,
            probe_task: None,
        })
    }

    /// Shows that `name`'s instance comes from `library` (and runs as process `pid`).
    pub(super) fn show_generation(&mut self, name: &str, library: &P::Library, pid: Option<u32>) {
        self.containers.show(name, |status| {
            status.version = Some(library.info().version.clone());
            status.generation = Some(library.generation());
            status.file = Some(file_name(library.file()));
            status.loaded_at = Some(rfc3339(library.loaded_at()));
            status.sha256 = Some(library.short_hash().to_owned());
            status.process = pid.map(|pid| ProcessFigures {
                pid,
                rss_bytes: 0,
                cpu_seconds: 0.0,
            });
        });
    }

    /// Replaces `name`'s running instance with one on `library` started beside it. `Err`
    /// says why the new one did not come up; the old one then runs on, untouched.
    pub(super) async fn overlap(
        &mut self,
        name: &str,
        library: &Arc<P::Library>,
    ) -> Result<(), String> {
        let Some(container) = self.containers.get(name) else {
            return Err("no longer registered".to_owned());
        };
        let Some(old) = container.instance.as_ref() else {
            return Err("not running".to_owned());
        };
        let (from, old_worker) = (old.generation, old.worker.clone());
        let spec = &container.spec;
        let (timeout, config_json) = (spec.start_timeout, spec.config_json.clone());
        let probe_readiness = spec.readiness.is_some();
        let to = library.generation();
        let handover = old_worker
            .handover(timeout)
            .await
            .map_err(|e| format!("generation {from} could not hand its state over: {e}"))?;
        drop(old_worker);
        let handed_over = handover.as_ref().map_or(0, |h| h.bytes.len());
        info!(container = %name, from_generation = from, to_generation = to, handed_over_bytes = handed_over, "starting the new instance beside the running one");
        let instance = self.prepare_instance(name, library, handover)?;
        let deadline = Instant::now() + timeout;
        let (worker, services) = (instance.worker.clone(), instance.services.clone());
        let mut constructed = false;
        let started = async {
            worker
                .construct(name, config_json, &services, timeout)
                .await
                .map_err(|e| match e {
                    CallError::Panicked(m) => format!("constructor {m}"),
                    other => format!("constructor failed: {other}"),
                })?;
            constructed = true;
            worker
                .start(left(deadline))
                .await
                .map_err(|e| format!("start failed: {e}"))?;
            wait_ready(&*worker, &services, probe_readiness, deadline).await
        }
        .await;
        drop(worker);
        if let Err(reason) = started {
            let reason = format!("generation {to}: {reason}");
            warn!(container = %name, generation = to, reason = %reason, "the new instance did not come up; the running one stays");
            if let Err(problem) = self.teardown(name, instance, constructed).await {
                warn!(container = %name, generation = to, problem = %problem, "tearing the new instance down");
            }
            return Err(reason);
        }
        self.switch_to(name, instance, library, from).await;
        Ok(())
    }

    /// The new instance takes the old one's place; the old one stops and drains.
    async fn switch_to(
        &mut self,
        name: &str,
        mut instance: Instance<P::Worker>,
        library: &Arc<P::Library>,
        from: u64,
    ) {
        let pid = instance.worker.pid();
        instance.probe_task = Some(self.spawn_probes(name, &instance));
        let Some(container) = self.containers.get_mut(name) else {
            return;
        };
        let old = container.instance.replace(instance);
        container.ready = true;
        self.show_generation(name, library, pid);
        self.containers.show(name, |status| status.ready = true);
        let to = library.generation();
        self.board.events.publish(EventKind::Replaced {
            container: name.to_owned(),
            from_generation: from,
            to_generation: to,
        });
        info!(container = %name, from_generation = from, to_generation = to, "the new instance serves; stopping the old one");
        if let Some(old) = old {
            let timeout = self
                .containers
                .get(name)
                .map_or(Duration::from_secs(10), |c| c.spec.stop_timeout);
            if let Err(problem) = self.teardown_within(name, old, true, timeout).await {
                warn!(container = %name, generation = from, problem = %problem, "the old instance did not stop cleanly");
            }
        }
        if self
            .containers
            .get(name)
            .is_some_and(|c| c.state() != State::Running)
        {
            self.containers.set_state(name, State::Running, None);
        }
    }
}

fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Waits until a new instance is ready: it has not said it is not (`Context::set_ready`),
/// and its readiness check (if it has a readiness probe) passes.
async fn wait_ready<W: Calls>(
    worker: &W,
    services: &HostServices,
    probe: bool,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let said = services.reported_readiness() != Some(false);
        let checked = if probe && said {
            match worker.ready(left(deadline)).await {
                Ok(None) => true,
                Ok(Some(report)) => report.healthy,
                Err(e) => return Err(format!("readiness check failed: {e}")),
            }
        } else {
            said
        };
        if checked {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err("not ready within its start timeout".to_owned());
        }
        tokio::time::sleep(READY_POLL).await;
    }
}
