//! The embedded default runtime: each worker is a child process of the `worker` binary,
//! in its own process group (so a Ctrl-C aimed at the control plane does not reach it),
//! with its own log file.
//!
//! Its bookkeeping lives under `<data dir>/workers/<name>/`: `spec.json` (the spec, written
//! at create), `pid.json` (pid and kernel start time, written at start), `exit.json` (the
//! exit status, written when a process we spawned ends), `worker.log` and `addr` (the
//! worker's HTTP address). That is what lets a restarted control plane list and adopt the
//! workers a previous instance started: a worker is running when its pid exists, is not a
//! zombie, and has the recorded start time (which guards against pid reuse).
//!
//! Every process also carries the runtime's root and its worker's name in its environment
//! (`process_marks`). A control plane killed between spawning a process and recording its
//! pid left a process no record knew, and the next instance started a second one beside
//! it: two writers on one client's graph. Each listing now looks for marked processes: one
//! its worker's record lacks is adopted (its pid recorded), and one beside a recorded live
//! process, or whose worker has no record at all, is stopped (SIGTERM, then SIGKILL).

use std::fs;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tracing::{debug, warn};

use super::process_marks::{marked_processes, MarkedProcess, NAME_MARK, ROOT_MARK};
use super::{ObservedWorker, Runtime, RuntimeError, RuntimeState, WorkerSpec};

const SPEC_FILE: &str = "spec.json";
const PID_FILE: &str = "pid.json";
const EXIT_FILE: &str = "exit.json";
const LOG_FILE: &str = "worker.log";
const ADDR_FILE: &str = "addr";

#[derive(Debug, Serialize, Deserialize)]
struct PidRecord {
    pid: i32,
    /// Field 22 of /proc/<pid>/stat: distinguishes our process from a later one that
    /// reuses the pid.
    proc_start_ticks: u64,
    started_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ExitRecord {
    pid: i32,
    exit_code: Option<i32>,
    exited_at: DateTime<Utc>,
}

/// Runs workers as local processes.
pub struct ProcessRuntime {
    root: PathBuf,
    worker_bin: PathBuf,
    /// Secrets (the Kafka SASL password) handed to each process at start, in its
    /// environment, which only its own user can read (`/proc/<pid>/environ` is 0400): never
    /// written to `spec.json` or anywhere else on disk.
    secret_env: Vec<(String, String)>,
    /// Stray processes signalled, and when: SIGTERM first, SIGKILL if one is still there
    /// [`STRAY_GRACE`] later.
    strays: std::sync::Mutex<std::collections::HashMap<(i32, u64), std::time::Instant>>,
}

/// How long a stray worker process has to exit after SIGTERM before SIGKILL.
const STRAY_GRACE: Duration = Duration::from_secs(10);

impl ProcessRuntime {
    /// Keeps its records under `<data_dir>/workers` and starts `worker_bin`.
    pub fn new(data_dir: &Path, worker_bin: PathBuf) -> Result<Self, RuntimeError> {
        let root = data_dir.join("workers");
        fs::create_dir_all(&root).map_err(|error| {
            RuntimeError::Unavailable(format!("cannot create {}: {error}", root.display()))
        })?;
        // Workers' logs and settings are the control plane's business only.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&root, fs::Permissions::from_mode(0o700));
        }
        // Absolute, so the root mark in each worker's environment is the same string
        // whatever directory a later control plane is started from.
        let root = fs::canonicalize(&root).unwrap_or(root);
        if !worker_bin.is_file() {
            return Err(RuntimeError::Unavailable(format!(
                "worker binary {} not found (build it with `cargo build -p worker`, or set CP_WORKER_BIN)",
                worker_bin.display()
            )));
        }
        Ok(Self {
            root,
            worker_bin,
            secret_env: Vec::new(),
            strays: Default::default(),
        })
    }

    /// Hands these secrets to every worker at start, and to nothing on disk.
    pub fn with_secret_env(mut self, secret_env: Vec<(String, String)>) -> Self {
        self.secret_env = secret_env;
        self
    }

    fn dir(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        // Names come from validated client ids and role names, but a path is built from
        // them, so refuse anything that could leave the root.
        if !super::is_worker_name(name) {
            return Err(RuntimeError::NotFound(name.to_string()));
        }
        Ok(self.root.join(name))
    }

    /// A client's durable data (the graph store): `<data dir>/clients/<client id>`.
    fn client_data_dir(&self, client_id: &str) -> Result<PathBuf, RuntimeError> {
        // Same guard as worker names: the id becomes a path.
        self.dir(client_id)?;
        Ok(self
            .root
            .parent()
            .unwrap_or(&self.root)
            .join("clients")
            .join(client_id))
    }

    fn observe(&self, name: &str) -> Result<ObservedWorker, RuntimeError> {
        let dir = self.dir(name)?;
        let spec: WorkerSpec = read_json(&dir.join(SPEC_FILE))
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))?;
        let pid: Option<PidRecord> = read_json(&dir.join(PID_FILE));
        let exit: Option<ExitRecord> = read_json(&dir.join(EXIT_FILE));
        let (id, state) = match pid {
            None => (name.to_string(), RuntimeState::Created),
            Some(record) => {
                let id = format!("{name}@{}", record.pid);
                if is_alive(&record) {
                    (
                        id,
                        RuntimeState::Running {
                            started_at: record.started_at,
                        },
                    )
                } else {
                    let (exit_code, exited_at) = match exit {
                        Some(exit) if exit.pid == record.pid => (exit.exit_code, exit.exited_at),
                        // Died while another control plane instance was its parent, or
                        // while none was: the status is lost, the time is approximate.
                        _ => (None, modified_at(&dir.join(PID_FILE))),
                    };
                    (
                        id,
                        RuntimeState::Exited {
                            exit_code,
                            exited_at,
                            // The process runtime has no memory limit to be killed for.
                            oom_killed: false,
                        },
                    )
                }
            }
        };
        Ok(ObservedWorker {
            name: spec.name,
            id: id.into(),
            client_id: spec.client_id.as_str().into(),
            role: spec.role,
            spec_hash: spec.spec_hash,
            state,
        })
    }

    /// Squares the marked processes with the records: adopts a process its worker's record
    /// lacks, stops one its worker's record does not name (or that has no record).
    fn settle_marked_processes(&self) {
        for process in marked_processes(&self.root, &self.worker_bin) {
            let Ok(dir) = self.dir(&process.name) else {
                continue;
            };
            let recorded: Option<PidRecord> = read_json(&dir.join(PID_FILE));
            match recorded {
                Some(record)
                    if record.pid == process.pid
                        && (record.proc_start_ticks == 0
                            || record.proc_start_ticks == process.start_ticks) => {}
                Some(record) if is_alive(&record) => {
                    self.stop_stray(&process, "a second process of a worker that runs")
                }
                _ if dir.join(SPEC_FILE).is_file() => self.adopt(&dir, &process),
                _ => self.stop_stray(&process, "a process of a worker that has no record"),
            }
        }
    }

    /// Records the pid of a worker's process that was started but never recorded.
    fn adopt(&self, dir: &Path, process: &MarkedProcess) {
        let record = PidRecord {
            pid: process.pid,
            proc_start_ticks: process.start_ticks,
            started_at: Utc::now(),
        };
        match serde_json::to_vec(&record)
            .map_err(|error| error.to_string())
            .and_then(|json| {
                write_atomically(&dir.join(PID_FILE), &json).map_err(|error| error.to_string())
            }) {
            Ok(()) => warn!(
                worker = %process.name,
                pid = process.pid,
                "adopted a worker process that was started but never recorded"
            ),
            Err(error) => {
                warn!(worker = %process.name, pid = process.pid, %error, "recording an unrecorded worker process failed")
            }
        }
    }

    fn stop_stray(&self, process: &MarkedProcess, why: &str) {
        let key = (process.pid, process.start_ticks);
        let Ok(mut strays) = self.strays.lock() else {
            return;
        };
        strays.retain(|(pid, ticks), _| proc_stat(*pid).is_some_and(|(_, start)| start == *ticks));
        let signal = match strays.get(&key) {
            None => {
                strays.insert(key, std::time::Instant::now());
                Signal::SIGTERM
            }
            Some(since) if since.elapsed() >= STRAY_GRACE => Signal::SIGKILL,
            Some(_) => return,
        };
        warn!(worker = %process.name, pid = process.pid, ?signal, why, "stopping a stray worker process");
        let _ = kill(Pid::from_raw(process.pid), signal);
    }

    fn running_pid(&self, name: &str) -> Result<Option<PidRecord>, RuntimeError> {
        let dir = self.dir(name)?;
        if !dir.join(SPEC_FILE).is_file() {
            return Err(RuntimeError::NotFound(name.to_string()));
        }
        Ok(read_json::<PidRecord>(&dir.join(PID_FILE)).filter(is_alive))
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn list(&self) -> Result<Vec<ObservedWorker>, RuntimeError> {
        self.settle_marked_processes();
        let entries = fs::read_dir(&self.root).map_err(|error| {
            RuntimeError::Unavailable(format!("cannot read {}: {error}", self.root.display()))
        })?;
        let mut workers = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match self.observe(&name) {
                Ok(worker) => workers.push(worker),
                // A directory without a spec was left by a crash during remove; nothing
                // runs there, so it is safe to clear.
                Err(RuntimeError::NotFound(_)) => {
                    debug!(%name, "removing incomplete worker record");
                    let _ = fs::remove_dir_all(entry.path());
                }
                Err(error) => return Err(error),
            }
        }
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(workers)
    }

    async fn create(&self, spec: &WorkerSpec) -> Result<ObservedWorker, RuntimeError> {
        let dir = self.dir(&spec.name)?;
        if dir.join(SPEC_FILE).exists() {
            return Err(RuntimeError::Conflict(spec.name.to_string()));
        }
        let failed = |error: std::io::Error| RuntimeError::Failed {
            operation: "create",
            name: spec.name.to_string(),
            reason: error.to_string(),
        };
        let json = serde_json::to_vec_pretty(spec).map_err(|error| RuntimeError::Failed {
            operation: "create",
            name: spec.name.to_string(),
            reason: error.to_string(),
        })?;
        // Built aside and renamed into place, so a listing never sees a half-made record.
        let staging = self.root.join(format!(".creating-{}", spec.name));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(failed)?;
        fs::write(staging.join(SPEC_FILE), &json).map_err(failed)?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&staging, &dir).map_err(failed)?;
        self.observe(&spec.name)
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        if self.running_pid(name)?.is_some() {
            return Ok(());
        }
        let dir = self.dir(name)?;
        let spec: WorkerSpec = read_json(&dir.join(SPEC_FILE))
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))?;
        let failed = |reason: String| RuntimeError::Failed {
            operation: "start",
            name: name.to_string(),
            reason,
        };
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_FILE))
            .map_err(|error| failed(error.to_string()))?;
        let log_err = log.try_clone().map_err(|error| failed(error.to_string()))?;
        let _ = fs::remove_file(dir.join(ADDR_FILE));
        let mut command = Command::new(&self.worker_bin);
        command
            .args(spec.args.iter())
            .env_clear()
            .envs(std::env::vars().filter(|(key, _)| key == "PATH" || key == "RUST_LOG"))
            .envs(spec.full_env())
            .envs(
                self.secret_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env(ROOT_MARK, &self.root)
            .env(NAME_MARK, name)
            .env("WORKER_LISTEN", "127.0.0.1:0")
            .env("WORKER_ADDR_FILE", dir.join(ADDR_FILE))
            .env(
                "WORKER_DATA_DIR",
                self.client_data_dir(spec.client_id.as_str())?,
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command
            .spawn()
            .map_err(|error| failed(format!("{}: {error}", self.worker_bin.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| failed("process exited before its pid was read".into()))?
            as i32;
        let record = PidRecord {
            pid,
            proc_start_ticks: proc_start_ticks(pid).unwrap_or(0),
            started_at: Utc::now(),
        };
        let json = serde_json::to_vec(&record).map_err(|error| failed(error.to_string()))?;
        write_atomically(&dir.join(PID_FILE), &json).map_err(|error| failed(error.to_string()))?;
        // Reap our child and record how it ended; without this it would stay a zombie.
        let exit_path = dir.join(EXIT_FILE);
        let worker = name.to_string();
        tokio::spawn(async move {
            let status = child.wait().await;
            let exit_code = status.as_ref().ok().and_then(|status| status.code());
            debug!(%worker, ?status, "worker process ended");
            let record = ExitRecord {
                pid,
                exit_code,
                exited_at: Utc::now(),
            };
            if let Ok(json) = serde_json::to_vec(&record) {
                if exit_path.parent().is_some_and(Path::is_dir) {
                    let _ = write_atomically(&exit_path, &json);
                }
            }
        });
        Ok(())
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        let Some(record) = self.running_pid(name)? else {
            return Ok(());
        };
        let pid = Pid::from_raw(record.pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if !is_alive(&record) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        warn!(
            worker = name,
            pid = record.pid,
            "worker ignored SIGTERM; killing it"
        );
        let _ = kill(pid, Signal::SIGKILL);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if !is_alive(&record) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(RuntimeError::Timeout {
            operation: "stop",
            name: name.to_string(),
            after: grace + Duration::from_secs(5),
        })
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        if self.running_pid(name)?.is_some() {
            return Err(RuntimeError::Conflict(name.to_string()));
        }
        let dir = self.dir(name)?;
        fs::remove_dir_all(&dir).map_err(|error| RuntimeError::Failed {
            operation: "remove",
            name: name.to_string(),
            reason: error.to_string(),
        })
    }

    async fn inspect(&self, name: &str) -> Result<ObservedWorker, RuntimeError> {
        self.observe(name)
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<String, RuntimeError> {
        let dir = self.dir(name)?;
        if !dir.join(SPEC_FILE).is_file() {
            return Err(RuntimeError::NotFound(name.to_string()));
        }
        Ok(tail_lines(&dir.join(LOG_FILE), tail))
    }

    async fn endpoint(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        let dir = self.dir(name)?;
        if self.running_pid(name)?.is_none() {
            return Ok(None);
        }
        Ok(fs::read_to_string(dir.join(ADDR_FILE)).ok())
    }

    async fn remove_client_data(&self, client_id: &str) -> Result<(), RuntimeError> {
        let dir = self.client_data_dir(client_id)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(RuntimeError::Failed {
                operation: "remove_client_data",
                name: client_id.to_string(),
                reason: error.to_string(),
            }),
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents)?;
    fs::rename(tmp, path)
}

fn modified_at(path: &Path) -> DateTime<Utc> {
    fs::metadata(path)
        .and_then(|meta| meta.modified())
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(|_| Utc::now())
}

/// The process's state letter and start time from /proc/<pid>/stat. The command name in
/// parentheses may contain spaces, so fields are counted after the last ')'.
pub(super) fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state come fields 4..; start time is field 22, the 19th after state.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn proc_start_ticks(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

fn is_alive(record: &PidRecord) -> bool {
    match proc_stat(record.pid) {
        Some((state, start)) => {
            state != 'Z'
                && state != 'X'
                && (record.proc_start_ticks == 0 || start == record.proc_start_ticks)
        }
        None => false,
    }
}

fn tail_lines(path: &Path, tail: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    // Read at most the last 256 KiB: enough for any sensible tail, bounded for huge logs.
    let len = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let skip = lines.len().saturating_sub(tail);
    let mut out = lines[skip..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}
