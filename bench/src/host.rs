//! Driving a real release host as a child process: start it, ask it over HTTP, follow its
//! event stream, measure its CPU time, stop it with SIGTERM.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// A running host, killed on drop.
pub struct Host {
    child: Child,
    pub addr: String,
    agent: ureq::Agent,
    /// When the process was spawned.
    pub spawned: Instant,
}

/// Where a host keeps its files: the plugin folder, and the temporary folder its private
/// copies go to.
pub struct Dirs {
    pub plugins: PathBuf,
    pub tmp: PathBuf,
}

impl Dirs {
    /// `plugins/` and `tmp/` under `work`.
    pub fn under(work: &Path) -> anyhow::Result<Self> {
        let dirs = Self {
            plugins: work.join("plugins"),
            tmp: work.join("tmp"),
        };
        std::fs::create_dir_all(&dirs.plugins)?;
        std::fs::create_dir_all(&dirs.tmp)?;
        Ok(dirs)
    }
}

impl Host {
    /// Starts `balut run` on a free loopback port and waits until it prints its address.
    pub fn start(balut: &Path, dirs: &Dirs, config: Option<&Path>) -> anyhow::Result<Self> {
        Self::start_logged(balut, dirs, config, None)
    }

    /// [`Host::start`], and the host's log (stderr, `warn,balut=info`) copied to `log`.
    pub fn start_logged(
        balut: &Path,
        dirs: &Dirs,
        config: Option<&Path>,
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(balut);
        command
            .args(["run", "--listen", "127.0.0.1:0", "--plugin-dir"])
            .arg(&dirs.plugins);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let spawned = Instant::now();
        let mut child = command
            // The copy also has the plugins' own lines.
            .env(
                "RUST_LOG",
                if log.is_some() {
                    "warn,balut=info,plugin=info"
                } else {
                    "warn,balut=info"
                },
            )
            .env("TMPDIR", &dirs.tmp)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting balut")?;
        let stderr = child.stderr.take().context("host stderr")?;
        let mut copy = match log {
            Some(path) => Some(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ),
            None => None,
        };
        let (tx, rx) = mpsc::channel();
        // Reads the log to its end, so the host never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = copy.as_mut() {
                    // The copy is for reading afterwards; a failed write only loses it.
                    if writeln!(file, "{line}").is_err() {
                        copy = None;
                    }
                }
                if let Some(at) = line.find("addr=") {
                    let addr = line[at + 5..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .context("the host did not print its address")?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(Self {
            child,
            addr,
            agent,
            spawned,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("http://{}{path}", self.addr);
        Ok(self.agent.get(&url).call()?.body_mut().read_json()?)
    }

    /// The value of one unlabelled sample of `GET /metrics`, e.g.
    /// `balut_library_load_duration_seconds_sum`.
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let url = format!("http://{}/metrics", self.addr);
        let text = self.agent.get(&url).call()?.body_mut().read_to_string()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("no metric {name}"))?
            .trim()
            .parse()
            .with_context(|| format!("metric {name}"))
    }

    /// Polls `/readyz` (every 1 ms) until the initial start is done and every container
    /// runs and is ready; returns when that was seen.
    pub fn wait_ready(&self, limit: Duration) -> anyhow::Result<Instant> {
        let url = format!("http://{}/readyz", self.addr);
        let deadline = Instant::now() + limit;
        loop {
            let mut response = self.agent.get(&url).call()?;
            if response.status() == 200 {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                let body = response.body_mut().read_to_string().unwrap_or_default();
                bail!("the host was not ready within {limit:?}: {body:.500}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Polls until `name` runs generation `generation`; returns when that was seen.
    pub fn wait_generation(
        &self,
        name: &str,
        generation: u64,
        limit: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            let c = self.get(&format!("/v1/containers/{name}"))?;
            if c["state"] == "running" && c["generation"].as_u64() == Some(generation) {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("{name} did not reach generation {generation}: {c}");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// How many containers are `running`, and how many are listed.
    pub fn running(&self) -> anyhow::Result<(usize, usize)> {
        let list = self.get("/v1/containers")?;
        let list = list["containers"]
            .as_array()
            .context("/v1/containers has no list of containers")?;
        let running = list.iter().filter(|c| c["state"] == "running").count();
        Ok((running, list.len()))
    }

    /// Follows `/v1/events` on a thread: each event (the JSON of its `data:` line) with
    /// when it arrived. The stream is subscribed when this returns; the thread ends when
    /// the receiver is dropped and the next event comes, or when the host closes the stream.
    pub fn events(&self) -> anyhow::Result<mpsc::Receiver<(Instant, Value)>> {
        let agent = ureq::Agent::config_builder()
            .timeout_global(None)
            .build()
            .new_agent();
        let url = format!("http://{}/v1/events", self.addr);
        // The host subscribes before it answers: no event after this call is missed.
        let response = agent.get(&url).call().context("GET /v1/events")?;
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let reader = BufReader::new(response.into_body().into_reader());
            for line in reader.lines().map_while(Result::ok) {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
                    continue;
                };
                if tx.send((Instant::now(), event)).is_err() {
                    return;
                }
            }
        });
        Ok(events)
    }

    /// Follows `/v1/events` on a thread and reports when each of `names` has become
    /// `running`. The stream is subscribed when this returns.
    pub fn watch_running(&self, names: HashSet<String>) -> anyhow::Result<RunningWatch> {
        let events = self.events()?;
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut left = names;
            for (at, event) in events {
                if event["type"] == "state" && event["to"] == "running" {
                    if let Some(name) = event["container"].as_str() {
                        left.remove(name);
                    }
                }
                if left.is_empty() {
                    let _ = tx.send(at);
                    return;
                }
            }
        });
        Ok(RunningWatch { done })
    }

    /// `POST path` with no body; the status code.
    pub fn post(&self, path: &str) -> anyhow::Result<u16> {
        let url = format!("http://{}{path}", self.addr);
        Ok(self.agent.post(&url).send_empty()?.status().as_u16())
    }

    /// CPU time the host process used so far, user + system, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time_of(self.pid())
    }
    /// CPU used over `window` of wall time, as a percentage of one core.
    pub fn cpu_percent_over(&self, window: Duration) -> anyhow::Result<f64> {
        let (began, cpu_before) = (Instant::now(), self.cpu_time()?);
        std::thread::sleep(window);
        let cpu = self.cpu_time()? - cpu_before;
        Ok(cpu.as_secs_f64() / began.elapsed().as_secs_f64() * 100.0)
    }

    /// The host's `balut __isolate` children (zombies included), from `/proc`.
    pub fn isolated_children(&self) -> anyhow::Result<Vec<u32>> {
        let mut children = children_of(self.pid())?;
        children.retain(|&pid| is_zombie(pid) || is_isolated(pid));
        Ok(children)
    }

    /// Sends SIGTERM and waits for the process to exit: how long that took, and its status.
    pub fn terminate(mut self, limit: Duration) -> anyhow::Result<(Duration, ExitStatus)> {
        let pid = Pid::from_raw(i32::try_from(self.pid())?);
        let began = Instant::now();
        kill(pid, Signal::SIGTERM).context("sending SIGTERM")?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((began.elapsed(), status));
            }
            if began.elapsed() > limit {
                bail!("the host did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reports when every awaited container was seen `running`.
pub struct RunningWatch {
    done: mpsc::Receiver<Instant>,
}

impl RunningWatch {
    pub fn wait(self, limit: Duration) -> anyhow::Result<Instant> {
        self.done
            .recv_timeout(limit)
            .context("not every container was running in time")
    }
}

/// CPU time process `pid` used so far, user + system, from `/proc/PID/stat`.
pub fn cpu_time_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(index - 3)
            .context("short /proc/PID/stat")?
            .parse()?)
    };
    let total = ticks(14)? + ticks(15)?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .filter(|&t| t > 0)
        .unwrap_or(100) as f64;
    Ok(Duration::from_secs_f64(total as f64 / per_second))
}

/// The children of `parent` (zombies included), from `/proc`.
pub fn children_of(parent: u32) -> anyhow::Result<Vec<u32>> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if state_and_parent(pid).is_some_and(|(_, ppid)| ppid == parent) {
            children.push(pid);
        }
    }
    Ok(children)
}

/// The state letter and the parent's pid of `pid`, from `/proc/PID/stat` (`None` once it
/// is gone).
fn state_and_parent(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses): the state, then the parent's pid.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.to_owned();
    Some((state, rest.next()?.parse().ok()?))
}

/// Whether `pid` is a zombie (ended, not reaped yet).
fn is_zombie(pid: u32) -> bool {
    state_and_parent(pid).is_some_and(|(state, _)| state == "Z")
}

/// Whether `pid` is (still) a `balut __isolate` process.
pub fn is_isolated(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"__isolate"))
}

/// A `NAME  1234 kB` line of `/proc/PID/FILE` (`VmRSS:` of `status`, `Pss:` of
/// `smaps_rollup`), in KiB.
pub fn proc_kib(pid: u32, file: &str, name: &str) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {name} in /proc/{pid}/{file}"))
}

/// `threads` clients, each on its own keep-alive connection, GET `path` for `each`.
/// Returns the sorted latencies of every request.
pub fn hammer(
    addr: &str,
    path: &str,
    threads: usize,
    each: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let url = format!("http://{addr}{path}");
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .new_agent();
                let mut latencies = Vec::new();
                let end = Instant::now() + each;
                while Instant::now() < end {
                    let began = Instant::now();
                    let mut response = agent.get(&url).call()?;
                    let _ = response.body_mut().read_to_vec()?;
                    latencies.push(began.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        let latencies = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.extend(latencies);
    }
    all.sort();
    Ok(all)
}
