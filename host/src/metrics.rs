//! Prometheus metrics: the one registry of the host, and the small functions the
//! supervisor calls to feed it. `GET /metrics` renders it.
//!
//! Counters and histograms are fed as things happen (loads, reloads, unloads, restarts,
//! probe results). Gauges that mirror the status board (containers per state, libraries
//! that could not be unloaded) are read from a board snapshot at scrape time, so they are
//! never out of step with `GET /v1/containers`.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::model::ProbeKind;
use crate::model::{ProcessFigures, Snapshot, State};

/// Every container state, in the order `/metrics` lists them.
const STATES: [(State, &str); 8] = [
    (State::Waiting, "waiting"),
    (State::Starting, "starting"),
    (State::Running, "running"),
    (State::Stopping, "stopping"),
    (State::Stopped, "stopped"),
    (State::Failed, "failed"),
    (State::Backoff, "backoff"),
    (State::Quarantined, "quarantined"),
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabel {
    container: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerStateLabel {
    container: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
    /// The plugin interface this host implements (`MAJOR.MINOR`; plugins of the same major
    /// and a minor up to it load).
    interface: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabel {
    listener: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabel {
    probe: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeResultLabel {
    probe: &'static str,
    result: &'static str,
}

/// 1 ms .. ~16 s: probes have a 2 s default timeout, loads a 10 s one.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The host's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    containers: Family<StateLabel, Gauge>,
    not_unloaded: Gauge,
    restarts: Family<ContainerLabel, Counter>,
    probes: Family<ProbeResultLabel, Counter>,
    probe_duration: Family<ProbeLabel, Histogram, fn() -> Histogram>,
    loads: Counter,
    load_failures: Counter,
    load_duration: Histogram,
    reloads: Counter,
    rollbacks: Counter,
    /// From new content seen to its containers running (or rolled back).
    reload_duration: Histogram,
    unloads: Counter,
    /// Stopping nothing: closing the library, deleting its copy, checking the maps.
    unload_duration: Histogram,
    /// API connections the limits closed, per listener and reason.
    api_closed: Family<ClosedLabel, Counter>,
    /// Isolated containers' processes: resident memory and CPU time, as of the scrape.
    resident: Family<ContainerLabel, Gauge>,
    cpu: Family<ContainerLabel, Gauge<f64, AtomicU64>>,
    /// 1 for each container's current state (the other states of it are absent).
    container_state: Family<ContainerStateLabel, Gauge>,
    /// How long ago the host started, as of the scrape.
    uptime: Gauge<f64, AtomicU64>,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("balut");
        let containers = Family::<StateLabel, Gauge>::default();
        registry.register("containers", "Containers in each state", containers.clone());
        let not_unloaded = Gauge::default();
        registry.register(
            "libraries_not_unloaded",
            "Library generations that could not be unloaded and stay mapped",
            not_unloaded.clone(),
        );
        let restarts = Family::<ContainerLabel, Counter>::default();
        registry.register(
            "container_restarts",
            "Restarts the restart policy decided, per container (immediate, after a backoff or a quarantine)",
            restarts.clone(),
        );
        let probes = Family::<ProbeResultLabel, Counter>::default();
        registry.register(
            "probes",
            "Probe results per probe kind and result (ok, failed)",
            probes.clone(),
        );
        let probe_duration: Family<ProbeLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_buckets);
        registry.register_with_unit(
            "probe_duration",
            "How long probes took, per probe kind",
            Unit::Seconds,
            probe_duration.clone(),
        );
        let loads = Counter::default();
        registry.register(
            "library_loads",
            "Plugin libraries loaded (a new generation in memory)",
            loads.clone(),
        );
        let load_failures = Counter::default();
        registry.register(
            "library_load_failures",
            "Plugin file loads that failed (refused, broken, timed out)",
            load_failures.clone(),
        );
        let load_duration = duration_buckets();
        registry.register_with_unit(
            "library_load_duration",
            "How long loading a plugin file took (check, copy, open), successful or not",
            Unit::Seconds,
            load_duration.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "plugin_reloads",
            "Plugin files whose containers moved to a new generation",
            reloads.clone(),
        );
        let rollbacks = Counter::default();
        registry.register(
            "plugin_rollbacks",
            "Reloads rolled back because the new generation's containers did not start",
            rollbacks.clone(),
        );
        let reload_duration = duration_buckets();
        registry.register_with_unit(
            "plugin_reload_duration",
            "How long a reload took, from loading the new generation to its containers running or the rollback",
            Unit::Seconds,
            reload_duration.clone(),
        );
        let unloads = Counter::default();
        registry.register(
            "library_unloads",
            "Library generations unloaded (dlclosed)",
            unloads.clone(),
        );
        let unload_duration = duration_buckets();
        registry.register_with_unit(
            "library_unload_duration",
            "How long unloading a library took (close, delete the copy, check the maps)",
            Unit::Seconds,
            unload_duration.clone(),
        );
        let api_closed = Family::<ClosedLabel, Counter>::default();
        registry.register(
            "api_connections_closed",
            "API connections closed to stay within the limits, per listener and reason (refused: over the cap; evicted: to make room; header_timeout: no request head in time)",
            api_closed.clone(),
        );
        let resident = Family::<ContainerLabel, Gauge>::default();
        registry.register(
            "container_resident_bytes",
            "Resident memory of each isolated container's process",
            resident.clone(),
        );
        let cpu = Family::<ContainerLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "container_cpu_seconds",
            "CPU time (user and system) of each isolated container's current process; a restart starts it again from 0",
            cpu.clone(),
        );
        let container_state = Family::<ContainerStateLabel, Gauge>::default();
        registry.register(
            "container_state",
            "1 for each container's current state (its other states are absent)",
            container_state.clone(),
        );
        let build_info = Family::<BuildLabel, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1: the host's version and the plugin interface it implements",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
                interface: crate::loader::InterfaceVersion::HOST.to_string(),
            })
            .set(1);
        let start_time = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "start_time",
            "When the host started, in seconds since the Unix epoch",
            Unit::Seconds,
            start_time.clone(),
        );
        start_time.set(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        let uptime = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "uptime",
            "How long the host has run, as of the scrape",
            Unit::Seconds,
            uptime.clone(),
        );
        Self {
            registry,
            container_state,
            uptime,
            started: Instant::now(),
            containers,
            resident,
            cpu,
            not_unloaded,
            restarts,
            probes,
            probe_duration,
            loads,
            load_failures,
            load_duration,
            reloads,
            rollbacks,
            reload_duration,
            unloads,
            unload_duration,
            api_closed,
        }
    }
}

impl Metrics {
    /// A load attempt of a plugin file ended after `took`.
    pub fn load(&self, ok: bool, took: Duration) {
        if ok {
            self.loads.inc();
        } else {
            self.load_failures.inc();
        }
        self.load_duration.observe(took.as_secs_f64());
    }

    /// A reload ended after `took`, with the new generation running.
    pub fn reloaded(&self, took: Duration) {
        self.reloads.inc();
        self.reload_duration.observe(took.as_secs_f64());
    }

    /// A reload ended after `took`, rolled back to the old generation.
    pub fn rolled_back(&self, took: Duration) {
        self.rollbacks.inc();
        self.reload_duration.observe(took.as_secs_f64());
    }

    /// A library was unloaded in `took`.
    /// The API's limits closed a connection on `listener`: `reason` is `refused` (over the
    /// cap), `evicted` (made room for a new one) or `header_timeout`.
    pub fn api_connection_closed(&self, listener: &str, reason: &'static str) {
        self.api_closed
            .get_or_create(&ClosedLabel {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn unloaded(&self, took: Duration) {
        self.unloads.inc();
        self.unload_duration.observe(took.as_secs_f64());
    }

    /// A container is known: its restart counter shows from 0.
    pub fn container_registered(&self, container: &str) {
        drop(self.restarts.get_or_create(&ContainerLabel {
            container: container.to_owned(),
        }));
    }

    /// The restart policy decided to restart `container`.
    pub fn restart(&self, container: &str) {
        self.restarts
            .get_or_create(&ContainerLabel {
                container: container.to_owned(),
            })
            .inc();
    }

    /// A probe result; `duration_ms` as the probe record has it.
    pub fn probe(&self, probe: ProbeKind, ok: bool, duration_ms: f64) {
        let probe = match probe {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        };
        let result = if ok { "ok" } else { "failed" };
        self.probes
            .get_or_create(&ProbeResultLabel { probe, result })
            .inc();
        self.probe_duration
            .get_or_create(&ProbeLabel { probe })
            .observe(duration_ms.max(0.0) / 1000.0);
    }

    /// The registry in the Prometheus text format, with the board's gauges as of
    /// `snapshot` and the figures of the isolated containers' `processes`.
    pub fn render(
        &self,
        snapshot: &Snapshot,
        processes: &[(&str, ProcessFigures)],
    ) -> Result<String, std::fmt::Error> {
        self.resident.clear();
        self.cpu.clear();
        for (container, figures) in processes {
            let label = ContainerLabel {
                container: (*container).to_owned(),
            };
            self.resident
                .get_or_create(&label)
                .set(i64::try_from(figures.rss_bytes).unwrap_or(i64::MAX));
            self.cpu.get_or_create(&label).set(figures.cpu_seconds);
        }
        for (state, label) in STATES {
            let count = snapshot
                .containers
                .iter()
                .filter(|c| c.state == state)
                .count();
            self.containers
                .get_or_create(&StateLabel { state: label })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.container_state.clear();
        for container in &snapshot.containers {
            self.container_state
                .get_or_create(&ContainerStateLabel {
                    container: container.name.clone(),
                    state: container.state.as_str(),
                })
                .set(1);
        }
        self.not_unloaded
            .set(i64::try_from(snapshot.not_unloaded.len()).unwrap_or(i64::MAX));
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_state_and_what_was_fed() {
        let metrics = Metrics::default();
        metrics.load(true, Duration::from_millis(12));
        metrics.load(false, Duration::from_millis(1));
        metrics.restart("web");
        metrics.probe(ProbeKind::Liveness, true, 0.5);
        let text = metrics.render(&Snapshot::default(), &[]).unwrap();
        for state in STATES.map(|(_, label)| label) {
            assert!(
                text.contains(&format!("balut_containers{{state=\"{state}\"}} 0")),
                "{text}"
            );
        }
        assert!(text.contains("balut_library_loads_total 1"), "{text}");
        assert!(
            text.contains("balut_library_load_failures_total 1"),
            "{text}"
        );
        assert!(
            text.contains("balut_container_restarts_total{container=\"web\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("balut_probe_duration_seconds_count{probe=\"liveness\"} 1"),
            "{text}"
        );
        assert!(text.contains("balut_libraries_not_unloaded 0"), "{text}");
        let interface = format!(
            "interface=\"{}.{}\"",
            balut_plugin_api::INTERFACE_MAJOR,
            balut_plugin_api::INTERFACE_MINOR
        );
        let build = text
            .lines()
            .find(|l| l.starts_with("balut_build_info{"))
            .unwrap_or_else(|| panic!("no build info: {text}"));
        assert!(
            build.contains(&interface) && build.ends_with("} 1"),
            "{build}"
        );
        assert!(text.contains("balut_uptime_seconds "), "{text}");
        assert!(text.contains("balut_start_time_seconds "), "{text}");
    }

    #[test]
    fn each_container_shows_its_current_state_only() {
        let metrics = Metrics::default();
        let mut snapshot = Snapshot::default();
        let mut web = crate::model::ContainerStatus::registered(
            "web",
            "http-echo",
            Vec::new(),
            crate::model::Isolation::Thread,
        );
        web.state = State::Running;
        snapshot.containers.push(web);
        let text = metrics.render(&snapshot, &[]).unwrap();
        let states: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("balut_container_state{"))
            .collect();
        assert_eq!(
            states,
            ["balut_container_state{container=\"web\",state=\"running\"} 1"],
            "{text}"
        );
        snapshot.containers[0].state = State::Failed;
        let text = metrics.render(&snapshot, &[]).unwrap();
        assert!(
            text.contains("balut_container_state{container=\"web\",state=\"failed\"} 1")
                && !text.contains("state=\"running\"} 1"),
            "{text}"
        );
        snapshot.containers.clear();
        let text = metrics.render(&snapshot, &[]).unwrap();
        assert!(!text.contains("balut_container_state{"), "{text}");
    }
}
