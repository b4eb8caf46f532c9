//! The simulation's generator: a seeded random source of configs, plugin files and
//! actions. Everything comes from one `fastrand::Rng`, so a seed replays exactly.

use std::time::Duration;

use super::fake::{Act, FakeFile, Recipe};

const FILES: [&str; 4] = ["a.so", "b.so", "c.so", "d.so"];
const PLUGINS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const CONTAINERS: [&str; 5] = ["c1", "c2", "c3", "c4", "c5"];

/// One step of a sequence.
#[derive(Debug, Clone)]
pub enum Action {
    /// Rename a file with this content into the folder (a new file or a replacement).
    Put {
        file: String,
        content: FakeFile,
    },
    Remove {
        file: String,
    },
    Rename {
        from: String,
        to: String,
    },
    /// Write this config and reload (SIGHUP or `POST /v1/reload`).
    Reload {
        text: String,
    },
    Start(String),
    Stop(String),
    Restart(String),
    ReportFailure(String),
    /// The container's process ends (as an isolated one's does when it crashes).
    ProcessEnded(String),
    ReportFinished(String),
    ReportReady(String, bool),
    /// Health checks of this plugin fail (or pass again).
    Sick(String, bool),
    Wait,
}

pub struct Script {
    rng: fastrand::Rng,
    version: u32,
}

impl Script {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            version: 0,
        }
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.rng.usize(..from.len())]
    }

    fn chance(&mut self, percent: u8) -> bool {
        self.rng.u8(..100) < percent
    }

    /// A call's behaviour: mostly fine, sometimes not.
    fn act(&mut self, percent_bad: u8) -> Act {
        if !self.chance(percent_bad) {
            return Act::Ok;
        }
        match self.rng.u8(..4) {
            0 => Act::Fail,
            1 => Act::Panic,
            2 => Act::Hang,
            _ => Act::Slow(self.rng.u64(1..800)),
        }
    }

    fn recipe(&mut self) -> Recipe {
        self.version += 1;
        let plugin = self.pick(&PLUGINS).to_owned();
        let default_requires = if self.chance(10) {
            vec![self.pick(&CONTAINERS).to_owned()]
        } else {
            Vec::new()
        };
        Recipe {
            plugin,
            version: self.version,
            new: self.act(6),
            start: self.act(10),
            stop: self.act(6),
            drop: self.act(4),
            health: self.act(5),
            ready: self.act(5),
            stays_mapped: self.chance(3),
            default_requires,
        }
    }

    fn file(&mut self) -> FakeFile {
        if self.chance(12) {
            FakeFile::Garbage(self.rng.u32(..4))
        } else {
            FakeFile::Plugin(self.recipe())
        }
    }

    pub fn initial_files(&mut self) -> Vec<(String, FakeFile)> {
        let mut files = Vec::new();
        for name in FILES {
            if self.chance(60) {
                files.push((name.to_owned(), self.file()));
            }
        }
        files
    }

    /// A valid config: containers over the plugins, dependencies without cycles declared
    /// in any order, host settings that vary.
    pub fn config_text(&mut self) -> String {
        let mut names: Vec<&str> = CONTAINERS
            .iter()
            .copied()
            .filter(|_| self.rng.bool())
            .collect();
        // `names` order is the dependency order: each may require earlier ones only.
        let mut entries = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut requires: Vec<&str> = names[..i]
                .iter()
                .copied()
                .filter(|_| self.chance(30))
                .collect();
            requires.dedup();
            let plugin = self.pick(&PLUGINS);
            let policy = self.pick(&["always", "on-failure", "never"]);
            let config = if self.chance(8) {
                "{ zzz = 1 }"
            } else {
                self.pick(&["{ a = 1 }", "{ b = \"x\" }", "{}"])
            };
            let mut entry = format!(
                "[containers.{name}]\nplugin = \"{plugin}\"\nrestart = \"{policy}\"\nconfig = {config}\nstart_timeout_ms = {}\n",
                self.pick(&["500", "1000"])
            );
            if !requires.is_empty() || self.chance(20) {
                let list: Vec<String> = requires.iter().map(|r| format!("\"{r}\"")).collect();
                entry.push_str(&format!("requires = [{}]\n", list.join(", ")));
            }
            entry.push_str(&format!(
                "[containers.{name}.backoff]\ninitial_ms = {}\nmax_restarts = {}\nwindow_ms = 5000\nquarantine_retry_ms = 10000\n",
                self.pick(&["100", "500"]),
                self.pick(&["2", "5"])
            ));
            entry.push_str(&format!(
                "[containers.{name}.liveness]\nperiod_ms = 300\ntimeout_ms = 200\nfailure_threshold = 2\ngrace_ms = {}\n",
                self.pick(&["0", "1000"])
            ));
            entries.push(entry);
        }
        // Declared in any order.
        self.rng.shuffle(&mut entries);
        names.clear();
        format!(
            "[host]\nstop_timeout_ms = {}\nshutdown_timeout_ms = {}\nsettle_ms = 100\nhealth_interval_ms = {}\nrescan_interval_ms = 2000\n\n{}",
            self.pick(&["300", "400"]),
            self.pick(&["3000", "20000"]),
            self.pick(&["1000", "2000"]),
            entries.join("\n")
        )
    }

    /// The next action; `names` are the registered containers.
    pub fn next_action(&mut self, names: &[String]) -> Action {
        let container = |s: &mut Self| -> String {
            if names.is_empty() || s.chance(5) {
                "nobody".to_owned()
            } else {
                names[s.rng.usize(..names.len())].clone()
            }
        };
        match self.rng.u8(..100) {
            0..=29 => Action::Put {
                file: self.pick(&FILES).to_owned(),
                content: self.file(),
            },
            30..=36 => Action::Remove {
                file: self.pick(&FILES).to_owned(),
            },
            37..=42 => Action::Rename {
                from: self.pick(&FILES).to_owned(),
                to: self.pick(&FILES).to_owned(),
            },
            43..=52 => Action::Reload {
                text: self.config_text(),
            },
            53..=58 => Action::Start(container(self)),
            59..=64 => Action::Stop(container(self)),
            65..=72 => Action::Restart(container(self)),
            73..=75 => Action::ReportFailure(container(self)),
            76..=77 => Action::ProcessEnded(container(self)),
            78..=81 => Action::ReportFinished(container(self)),
            82..=86 => Action::ReportReady(container(self), self.rng.bool()),
            87..=90 => Action::Sick(self.pick(&PLUGINS).to_owned(), self.chance(60)),
            _ => Action::Wait,
        }
    }

    /// How long to let the world run after an action.
    pub fn pause(&mut self) -> Duration {
        match self.rng.u8(..10) {
            0..=5 => Duration::from_millis(self.rng.u64(0..200)),
            6..=8 => Duration::from_millis(self.rng.u64(200..3_000)),
            _ => Duration::from_secs(self.rng.u64(5..70)),
        }
    }
}
