//! Helpers for the end-to-end tests: they build and start the real binaries (the embedded
//! broker, the control plane, whose process runtime starts real workers), talk Kafka with
//! `kcat` (an independent client) and with rdkafka, and poll with deadlines.
//!
//! Everything a test starts is killed when its handle drops, workers included, so a failed
//! assertion leaves no process behind.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;

/// Paths of the built binaries.
pub struct Binaries {
    pub control_plane: PathBuf,
    pub worker: PathBuf,
    pub agent: PathBuf,
}

/// Builds the binaries once per test process, with the profile the tests were built with,
/// so a test never runs a stale binary.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        // target/<profile>/deps/<test binary>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let release = profile_dir
            .file_name()
            .is_some_and(|name| name == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.args([
            "build",
            "--bins",
            "-p",
            "control-plane",
            "-p",
            "worker",
            "-p",
            "kg-rca-agent",
        ]);
        if release {
            command.arg("--release");
        }
        let status = command.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        Binaries {
            control_plane: profile_dir.join("control-plane"),
            worker: profile_dir.join("worker"),
            agent: profile_dir.join("kg-rca-agent"),
        }
    })
}

/// Polls `check` every 100 ms until it returns `Some` or `deadline` passes.
pub fn poll<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= until {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Which Kafka-protocol broker a test runs against. The end-to-end suites run on both:
/// the embedded default (librdkafka's mock cluster, in its own process) and `noida-db`, an
/// independent broker with real Kafka semantics (offsets by time, group listing, durable
/// data), installed by `scripts/install-test-tools.sh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Embedded,
    NoidaDb,
}

/// Whether a missing tool (Docker Engine, noida-db, promtool) fails a test instead of
/// skipping it: `.ci/run` sets `KG_TEST_STRICT=1`, so CI can never pass by skipping.
pub fn strict() -> bool {
    std::env::var("KG_TEST_STRICT").is_ok_and(|value| value == "1" || value == "true")
}

/// Skips (returns `Ok(None)`, after saying so on standard error) or, under
/// [`strict`], fails when `tool` is missing.
pub fn require_tool<T>(tool: &str, found: Option<T>, how: &str) -> Result<Option<T>> {
    match found {
        Some(found) => Ok(Some(found)),
        None if strict() => bail!("{tool} is required (KG_TEST_STRICT=1) but missing: {how}"),
        None => {
            eprintln!("SKIPPED: {tool} is missing ({how}); set KG_TEST_STRICT=1 to fail instead");
            Ok(None)
        }
    }
}

/// The `helm` binary `scripts/install-chart-tools.sh` installs under `$KG_TOOLS_DIR`
/// (`~/.cache/kg-rca-tools/bin/helm`), else one on the PATH.
pub fn helm_binary() -> Option<PathBuf> {
    let tools = std::env::var("KG_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/kg-rca-tools")
        });
    let installed = tools.join("bin/helm");
    if installed.exists() {
        return Some(installed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("helm"))
            .find(|candidate| candidate.is_file())
    })
}

/// The noida-db broker binary: `$KG_NOIDA_DB`, else the link
/// `scripts/install-test-tools.sh` makes under `$KG_TOOLS_DIR` (`~/.cache/kg-rca-tools`)
/// to the binary inside its virtual environment. Not the pip entry point: that is a Python
/// wrapper, and a signal to it leaves the broker running.
pub fn noida_db_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("KG_NOIDA_DB") {
        return Some(PathBuf::from(path)).filter(|p| p.exists());
    }
    let tools = std::env::var("KG_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/kg-rca-tools")
        });
    Some(tools.join("noida-db")).filter(|p| p.exists())
}

/// A broker as its own process: the embedded broker (`control-plane embedded-broker`, which
/// creates the topics itself) or noida-db on a free port with its own data directory
/// (topics made with `control-plane create-topics`, as an operator would).
pub struct Broker {
    child: Child,
    stdin: Option<ChildStdin>,
    pub bootstrap: String,
    pub kind: BrokerKind,
    noida: Option<NoidaState>,
}

struct NoidaState {
    binary: PathBuf,
    host: String,
    port: u16,
    data: tempfile::TempDir,
}

impl Broker {
    /// The embedded broker.
    pub fn start() -> Result<Self> {
        let mut child = Command::new(&binaries().control_plane)
            .arg("embedded-broker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start the embedded broker")?;
        let stdout = child.stdout.take().context("broker stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .context("the broker printed nothing")?
            .context("read the broker's first line")?;
        let bootstrap = first
            .strip_prefix("bootstrap=")
            .with_context(|| format!("first line is not bootstrap=…: {first:?}"))?
            .to_string();
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            bootstrap,
            kind: BrokerKind::Embedded,
            noida: None,
        })
    }

    /// A broker of `kind`; `Ok(None)` when noida-db is not installed and the run is not
    /// [`strict`] (the test is then skipped, and says so).
    pub fn start_kind(kind: BrokerKind) -> Result<Option<Self>> {
        match kind {
            BrokerKind::Embedded => Self::start().map(Some),
            BrokerKind::NoidaDb => Self::start_noida_on("127.0.0.1"),
        }
    }

    /// noida-db listening on `host` (an address other machines, or network namespaces,
    /// reach), with the project's topics; `Ok(None)` as for [`Self::start_kind`].
    pub fn start_noida_on(host: &str) -> Result<Option<Self>> {
        let Some(binary) = require_tool(
            "noida-db",
            noida_db_binary(),
            "run scripts/install-test-tools.sh",
        )?
        else {
            return Ok(None);
        };
        Self::start_noida(binary, host).map(Some)
    }

    fn start_noida(binary: PathBuf, host: &str) -> Result<Self> {
        let data = tempfile::tempdir()?;
        let port = free_port()?;
        let child = spawn_noida(&binary, host, port, data.path())?;
        let mut broker = Self {
            child,
            stdin: None,
            bootstrap: format!("{host}:{port}"),
            kind: BrokerKind::NoidaDb,
            noida: Some(NoidaState {
                binary,
                host: host.to_string(),
                port,
                data,
            }),
        };
        broker.wait_until_answering()?;
        create_topics(&broker.bootstrap)?;
        Ok(broker)
    }

    /// Restarts noida-db on the same port and data directory (SIGKILL, as a crash would,
    /// when `kill` is set; SIGTERM otherwise).
    pub fn restart(&mut self, kill: bool) -> Result<()> {
        let state = self
            .noida
            .as_ref()
            .context("only noida-db restarts (the embedded broker keeps nothing)")?;
        let signal = if kill {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        // The whole process group: whatever the broker started goes with it.
        let _ = nix::sys::signal::kill(Pid::from_raw(-(self.child.id() as i32)), signal);
        let _ = self.child.wait();
        self.child = spawn_noida(&state.binary, &state.host, state.port, state.data.path())?;
        self.wait_until_answering()
    }

    fn wait_until_answering(&mut self) -> Result<()> {
        let bootstrap = self.bootstrap.clone();
        poll(
            "noida-db to answer metadata",
            Duration::from_secs(60),
            || {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Some(Err(anyhow::anyhow!("noida-db exited: {status}")));
                }
                Command::new("kcat")
                    .args(["-L", "-b", &bootstrap, "-m", "2"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .ok()
                    .filter(|status| status.success())
                    .map(|_| Ok(()))
            },
        )?
    }

    /// Sends `down <id>` or `up <id>` (embedded broker only).
    pub fn command(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("broker stdin (only the embedded broker takes commands)")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }
}

fn spawn_noida(binary: &Path, host: &str, port: u16, data: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))?;
    use std::os::unix::process::CommandExt;
    Command::new(binary)
        .process_group(0)
        .args(["start", "--only", "kafka", "--kafka-port"])
        .arg(port.to_string())
        .args(["--host", host, "--data-dir"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("start {}", binary.display()))
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `control-plane create-topics` against `bootstrap`, as an operator sets a cluster up.
pub fn create_topics(bootstrap: &str) -> Result<String> {
    let output = Command::new(&binaries().control_plane)
        .arg("create-topics")
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("KAFKA_WAIT_SECS", "30")
        .env("RUST_LOG", "warn")
        .output()
        .context("run control-plane create-topics")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "create-topics failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.noida.is_some() {
            let _ =
                nix::sys::signal::kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an end-to-end scenario once per broker: `on_both_brokers!(name)` turns
/// `async fn name(kind: BrokerKind) -> Result<()>` into the tests `name::embedded` and
/// `name::noida_db`.
#[macro_export]
macro_rules! on_both_brokers {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() -> anyhow::Result<()> {
                super::$scenario($crate::BrokerKind::Embedded).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn noida_db() -> anyhow::Result<()> {
                super::$scenario($crate::BrokerKind::NoidaDb).await
            }
        }
    };
}

/// The broker of `kind`, or return `Ok(())` from the test when it is skipped.
#[macro_export]
macro_rules! broker_or_skip {
    ($kind:expr) => {
        match $crate::Broker::start_kind($kind)? {
            Some(broker) => broker,
            None => return Ok(()),
        }
    };
}

/// Options of a control plane under test.
#[derive(Clone)]
pub struct ControlPlaneOptions {
    pub heartbeat_timeout_secs: u64,
    pub api_token: Option<String>,
    pub restart_delay_secs: u64,
    /// Whether the shared event attributor runs. Off unless a test asks: it is tested in
    /// attribution.rs, and the other suites count one client's workers and worker records.
    /// A field of its own, so that a test giving `extra_env` cannot turn it on by accident.
    pub event_attributor: bool,
    /// Whether the built-in pipelines (alert enrichment, a fourth worker per client) run
    /// when `extra_env` names no templates file. Off unless a test asks, for the same
    /// reason as the attributor: it is tested in pipelines.rs.
    pub built_in_pipelines: bool,
    /// Further settings for the control plane's environment.
    pub extra_env: Vec<(String, String)>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            heartbeat_timeout_secs: 120,
            api_token: Some("test-token".into()),
            restart_delay_secs: 1,
            event_attributor: false,
            built_in_pipelines: false,
            extra_env: Vec::new(),
        }
    }
}

/// A `control-plane run` process with the process runtime and its own data directory.
pub struct ControlPlane {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub api: String,
    bootstrap: String,
    options: ControlPlaneOptions,
    _temp: Option<tempfile::TempDir>,
}

impl ControlPlane {
    pub fn start(broker: &Broker, options: ControlPlaneOptions) -> Result<Self> {
        let temp = tempfile::tempdir()?;
        let data_dir = temp.path().to_path_buf();
        let mut plane = Self {
            child: None,
            data_dir,
            api: String::new(),
            bootstrap: broker.bootstrap.clone(),
            options,
            _temp: Some(temp),
        };
        plane.spawn()?;
        Ok(plane)
    }

    /// Starts the process (again) on the same data directory.
    pub fn spawn(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.data_dir.join("api.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("control-plane.log"))?;
        let mut command = Command::new(&binaries().control_plane);
        command
            .arg("run")
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.bootstrap)
            .env("CP_LISTEN", "127.0.0.1:0")
            .env("CP_DATA_DIR", &self.data_dir)
            .env("CP_RUNTIME", "process")
            .env("CP_WORKER_BIN", &binaries().worker)
            .env(
                "CP_HEARTBEAT_TIMEOUT_SECS",
                self.options.heartbeat_timeout_secs.to_string(),
            )
            .env(
                "CP_RESTART_BACKOFF_BASE_MS",
                (self.options.restart_delay_secs * 1000).to_string(),
            )
            .env("CP_RECONCILE_INTERVAL_MS", "250")
            .env(
                "CP_EVENT_ATTRIBUTOR",
                self.options.event_attributor.to_string(),
            )
            .env("CP_STOP_GRACE_SECS", "5")
            .env("RUST_LOG", "info,rdkafka=warn")
            .env_remove("CP_PIPELINES_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        if !self.options.built_in_pipelines {
            // An empty templates file: no pipeline.
            let none = self.data_dir.join("no-pipelines.toml");
            std::fs::write(&none, "")?;
            command.env("CP_PIPELINES_FILE", none);
        }
        command.envs(self.options.extra_env.iter().cloned());
        match &self.options.api_token {
            Some(token) => command.env("CP_API_TOKEN", token),
            None => command.env_remove("CP_API_TOKEN"),
        };
        self.child = Some(command.spawn().context("start the control plane")?);
        let addr_file = self.data_dir.join("api.addr");
        let addr = poll(
            "the control plane's API address",
            Duration::from_secs(30),
            || std::fs::read_to_string(&addr_file).ok(),
        )?;
        self.api = format!("http://{addr}");
        poll(
            "the control plane to be ready",
            Duration::from_secs(60),
            || self.get("/ready").ok().filter(|(code, _)| *code == 200),
        )
        .with_context(|| self.log_tail())?;
        Ok(())
    }

    /// SIGTERM, as an operator or orchestrator would; how long the process took to exit, or
    /// an error (after a SIGKILL) when it did not within `deadline`.
    pub fn terminate(&mut self, deadline: Duration) -> Result<Duration> {
        let mut child = self.child.take().context("not running")?;
        let started = Instant::now();
        nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        while started.elapsed() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("the control plane did not exit within {deadline:?} of SIGTERM")
    }

    /// Sends `signal` to the process (SIGSTOP and SIGCONT to freeze it while the broker
    /// moves on).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let child = self.child.as_ref().context("not running")?;
        nix::sys::signal::kill(Pid::from_raw(child.id() as i32), signal)?;
        Ok(())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GET, returning status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http::blocking_get(&format!("{}{path}", self.api))
    }

    /// The client's record, if registered.
    pub fn client(&self, id: &str) -> Option<Value> {
        let (code, body) = self.get(&format!("/clients/{id}")).ok()?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// Names and ids of the client's running workers, sorted.
    pub fn running_workers(&self, id: &str) -> Vec<(String, String)> {
        let Some(client) = self.client(id) else {
            return Vec::new();
        };
        let mut workers: Vec<(String, String)> = client["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["state"] == "running")
            .map(|w| {
                (
                    w["name"].as_str().unwrap_or_default().to_string(),
                    w["id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        workers.sort();
        workers
    }

    /// The value of a metric line (exact series text before the value), summed if repeated.
    pub fn metric(&self, series: &str) -> f64 {
        let Ok((_, body)) = self.get("/metrics") else {
            return 0.0;
        };
        body.lines()
            .filter(|line| line.starts_with(series))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The graph's ranked root-cause candidates for one of `client`'s normalized events
    /// (`GET /clients/{client}/rca`); `None` until there is a non-empty answer.
    pub fn rca(&self, client: &str, event_id: &str) -> Option<Vec<Value>> {
        let (code, body) = self
            .get(&format!("/clients/{client}/rca?event_id={event_id}"))
            .ok()?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        let candidates = answer["candidates"].as_array()?.clone();
        (code == 200 && !candidates.is_empty()).then_some(candidates)
    }

    /// Waits until the controller has made `passes` more reconcile passes, so whatever
    /// wrong it would do has been done.
    pub fn wait_reconcile_passes(&self, passes: u32) -> Result<()> {
        let target = self.metric("cp_reconciles_total") + f64::from(passes);
        poll(
            &format!("{passes} more reconcile passes"),
            Duration::from_secs(10),
            || (self.metric("cp_reconciles_total") >= target).then_some(()),
        )
    }

    /// Worker directories of the process runtime (one per existing worker).
    pub fn worker_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data_dir.join("workers"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The pid of a worker process, from the process runtime's records.
    pub fn worker_pid(&self, name: &str) -> Option<i32> {
        let text =
            std::fs::read_to_string(self.data_dir.join("workers").join(name).join("pid.json"))
                .ok()?;
        let value: Value = serde_json::from_str(&text).ok()?;
        value["pid"].as_i64().map(|pid| pid as i32)
    }

    /// `host:port` of a worker's HTTP server, from the process runtime's records.
    pub fn worker_addr(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.data_dir.join("workers").join(name).join("addr"))
            .ok()
            .map(|addr| addr.trim().to_string())
            .filter(|addr| !addr.is_empty())
    }

    /// The control plane's own log (standard output and error).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("control-plane.log")).unwrap_or_default()
    }

    /// A worker's log file.
    pub fn worker_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.data_dir.join("workers").join(name).join("worker.log"))
            .unwrap_or_default()
    }

    /// The last lines of the control plane's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.data_dir.join("control-plane.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let workers: Vec<String> = self
            .worker_dirs()
            .iter()
            .map(|name| format!("--- {name}:\n{}", tail(&self.worker_log(name), 8)))
            .collect();
        format!(
            "control-plane log tail:\n{}\nworkers:\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n"),
            workers.join("\n")
        )
    }

    fn kill_workers(&self) {
        for name in self.worker_dirs() {
            if let Some(pid) = self.worker_pid(&name) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        self.kill_workers();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub mod docker;
pub mod fake_kube;
pub mod incident;
pub mod raw_kafka;

/// A running `kg-rca-agent` with its log file.
pub struct Agent {
    child: Child,
    log: PathBuf,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Runs the agent binary with exactly `env` (plus PATH) and `args`.
    pub fn start(env: &[(String, String)], args: &[impl AsRef<std::ffi::OsStr>]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("agent.log");
        let file = std::fs::File::create(&log)?;
        let child = Command::new(&binaries().agent)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,rdkafka=warn")
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .context("start the agent")?;
        let addr = env
            .iter()
            .find(|(k, _)| k == "LISTEN_ADDR")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Ok(Self {
            child,
            log,
            addr,
            _dir: dir,
        })
    }

    /// Waits for the process to exit (a `deregister` run).
    pub fn wait(&mut self) -> Result<std::process::ExitStatus> {
        Ok(self.child.wait()?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http::blocking_get(&format!("http://{}/metrics", self.addr)).ok()?;
        body.lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    pub fn health(&self) -> Option<Value> {
        let (_, body) = http::blocking_get(&format!("http://{}/health", self.addr)).ok()?;
        serde_json::from_str(&body).ok()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal blocking HTTP over std, to keep the tests free of an async HTTP stack.
pub mod http {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use anyhow::{bail, Context, Result};

    pub fn blocking_get(url: &str) -> Result<(u16, String)> {
        request("GET", url, None)
    }

    pub fn request(method: &str, url: &str, bearer: Option<&str>) -> Result<(u16, String)> {
        let auth = bearer.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|value| ("Authorization", value))
            .into_iter()
            .collect();
        let response = request_with_headers(method, url, &headers)?;
        Ok((response.code, response.body))
    }

    /// A whole answer: status, header block (lines `name: value`) and body.
    pub struct Response {
        pub code: u16,
        pub head: String,
        pub body: String,
    }

    impl Response {
        /// A header's value, by case-insensitive name.
        pub fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then_some(value.trim())
            })
        }
    }

    pub fn request_with_headers(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        let rest = url.strip_prefix("http://").context("http urls only")?;
        let (host, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        let mut stream = TcpStream::connect(host)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            bail!("malformed response");
        };
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .context("status code")?
            .parse()?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok(Response {
            code,
            head: head.to_string(),
            body,
        })
    }

    fn dechunk(mut body: &str) -> String {
        let mut out = String::new();
        while let Some((size, rest)) = body.split_once("\r\n") {
            let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if size == 0 || rest.len() < size {
                break;
            }
            out.push_str(&rest[..size]);
            body = rest[size..].trim_start_matches("\r\n");
        }
        out
    }
}

/// The separator between key and value in kcat's produce input and consume output: a
/// byte that no test key or value contains, so keys may hold `:` and `|`.
pub const KCAT_DELIMITER: &str = "\u{1f}";

/// Produces one record with `kcat`. `value: None` produces a null value (a tombstone).
pub fn kcat_produce(
    bootstrap: &str,
    topic: &str,
    key: &str,
    value: Option<&str>,
    compression: Option<&str>,
) -> Result<()> {
    let mut command = Command::new("kcat");
    command.args(["-P", "-b", bootstrap, "-t", topic, "-K", KCAT_DELIMITER]);
    if let Some(codec) = compression {
        command.args(["-z", codec]);
    }
    if value.is_none() {
        // -Z: an empty value is sent as NULL, which is what a tombstone is.
        command.arg("-Z");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run kcat (is the kcat package installed?)")?;
    {
        let stdin = child.stdin.as_mut().context("kcat stdin")?;
        writeln!(stdin, "{key}{KCAT_DELIMITER}{}", value.unwrap_or(""))?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "kcat produce failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Reads a whole topic with `kcat` (from the beginning to the current end) as key/value
/// pairs; a null value reads as an empty string.
pub fn kcat_consume(bootstrap: &str, topic: &str) -> Result<Vec<(String, String)>> {
    let output = Command::new("kcat")
        .args([
            "-C",
            "-b",
            bootstrap,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
        ])
        .arg(format!("%k{KCAT_DELIMITER}%s\\n"))
        .output()
        .context("run kcat")?;
    if !output.status.success() {
        bail!(
            "kcat consume failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            line.split_once(KCAT_DELIMITER)
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// Lists consumer groups with `kcat -L`-style metadata is not possible; the broker's
/// group list comes from rdkafka.
pub fn consumer_groups(bootstrap: &str) -> Result<Vec<String>> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let groups = consumer.fetch_group_list(None, Duration::from_secs(10))?;
    Ok(groups
        .groups()
        .iter()
        .map(|g| g.name().to_string())
        .collect())
}

/// An rdkafka producer.
pub fn producer(bootstrap: &str, compression: &str) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", compression)
        .set("linger.ms", "5")
        .create()?)
}

/// Produces and waits for the acknowledgement.
pub async fn send(producer: &FutureProducer, topic: &str, key: &str, value: &str) -> Result<()> {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(error, _)| anyhow::anyhow!("produce to {topic}: {error}"))?;
    Ok(())
}

/// Produces to a chosen partition (or the key's, with `None`) and waits for the
/// acknowledgement; returns where the record landed, (partition, offset).
pub async fn send_to(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    value: &str,
) -> Result<(i32, i64)> {
    let mut record = FutureRecord::to(topic).key(key).payload(value);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(error, _)| anyhow::anyhow!("produce to {topic}: {error}"))?;
    Ok((delivery.partition, delivery.offset))
}

/// Produces many records concurrently and waits for every acknowledgement.
pub async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    records: Vec<(String, String)>,
) -> Result<()> {
    let sends = records
        .iter()
        .map(|(key, value)| send(producer, topic, key, value));
    futures::future::try_join_all(sends).await?;
    Ok(())
}

/// An rdkafka consumer of `topics` in a fresh group, from the beginning.
pub fn consumer(bootstrap: &str, topics: &[&str]) -> Result<StreamConsumer> {
    let group = format!("e2e-{}", std::process::id()) + &format!("-{}", rand_suffix());
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Reads records from `consumer` until `done` says so or `deadline` passes.
pub async fn consume_until(
    consumer: &StreamConsumer,
    deadline: Duration,
    mut done: impl FnMut(&str, &str, &str) -> bool,
) -> Result<()> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let message = match tokio::time::timeout_at(until, consumer.recv()).await {
            Err(_) => bail!("timed out after {deadline:?} consuming"),
            Ok(Err(error)) => {
                eprintln!("consumer error: {error}");
                continue;
            }
            Ok(Ok(message)) => message,
        };
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
        if done(message.topic(), &key, &value) {
            return Ok(());
        }
    }
}

/// Heartbeats for a client on both of the agent's streams (plain keyed `<id>`, and zstd
/// keyed `<id>::<id>`) every `every` until stopped.
pub struct Heartbeater {
    stop: Arc<AtomicBool>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Heartbeater {
    pub fn start(bootstrap: &str, client: &str, every: Duration) -> Result<Self> {
        let plain = producer(bootstrap, "none")?;
        let zstd = producer(bootstrap, "zstd")?;
        let stop = Arc::new(AtomicBool::new(false));
        let client = client.to_string();
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            while !flag.load(Ordering::Relaxed) {
                let now = chrono::Utc::now().to_rfc3339();
                let _ = send(
                    &plain,
                    "cluster.heartbeat",
                    &client,
                    &format!(r#"{{"client_id":"{client}","timestamp":"{now}"}}"#),
                )
                .await;
                let _ = send(
                    &zstd,
                    "cluster.heartbeat",
                    &format!("{client}::{client}"),
                    &format!(r#"{{"client_id":"{client}","metrics":{{"resources_sent":0,"uptime_seconds":120}},"status":"healthy","timestamp":"{now}"}}"#),
                )
                .await;
                tokio::time::sleep(every).await;
            }
        });
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops and returns when the last heartbeat has been acknowledged.
    pub async fn stop(mut self) -> Instant {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
        Instant::now()
    }
}

impl Drop for Heartbeater {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The chart's post-install registration for `client`, byte for byte as protocol.md shows.
pub fn chart_registration(client: &str) -> String {
    format!(
        r#"{{"client_id":"{client}","cluster_name":"prod-eu","region":"unknown","timestamp":"2025-10-28T08:30:00Z","chart_version":"2.1.2"}}"#
    )
}

/// Registers `client` the way the chart's post-install hook does, through kcat.
pub fn register_with_chart(bootstrap: &str, client: &str) -> Result<()> {
    kcat_produce(
        bootstrap,
        "cluster.registry",
        client,
        Some(&chart_registration(client)),
        None,
    )
}

/// The protocol's example raw event, with a chosen uid.
pub fn raw_event(uid: &str, reason: &str) -> String {
    format!(
        r#"{{"event_id":"evt-{uid}","reason":"{reason}","message":"Container killed: out of memory","type":"Warning","metadata":{{"uid":"{uid}","creationTimestamp":"2025-10-28T08:31:00Z"}},"involvedObject":{{"kind":"Pod","name":"api-7d9f","namespace":"default","uid":"b1e2-{uid}"}},"source":{{"host":"node-1"}},"lastTimestamp":"2025-10-28T08:31:00Z","count":3}}"#
    )
}
