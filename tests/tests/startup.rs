//! Start-up checks of both binaries, end to end: a required check that fails ends the
//! process with exit code 2 and exactly one `startup check failed: <check>: … (fix: …)`
//! line on standard error, within a few seconds; with everything in place the checks pass
//! quickly and the process starts.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kg_tests::*;

const PREFIX: &str = "startup check failed:";

/// A started binary whose standard error is collected line by line.
struct Running {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

impl Running {
    fn spawn(mut command: Command) -> Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start the binary")?;
        let started = Instant::now();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().context("stderr pipe")?;
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Ok(Self {
            child,
            stderr,
            started,
        })
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for the exit (and for its stderr to be read to the end).
    fn exit_within(&mut self, deadline: Duration) -> Result<(ExitStatus, Duration, Vec<String>)> {
        let status = poll("the process to exit", deadline, || {
            self.child.try_wait().ok().flatten()
        })
        .with_context(|| format!("stderr so far: {:#?}", self.stderr()))?;
        let elapsed = self.started.elapsed();
        // The reader thread ends at EOF, right after the exit; give it a moment.
        let lines = poll("stderr to be read", Duration::from_secs(5), || {
            let lines = self.stderr();
            lines
                .iter()
                .any(|line| line.starts_with(PREFIX))
                .then_some(lines)
        })
        .unwrap_or_else(|_| self.stderr());
        Ok((status, elapsed, lines))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts exit code 2 and exactly one failure line, which starts with `expected`; returns
/// that line.
fn one_failure_line(status: ExitStatus, lines: &[String], expected: &str) -> Result<String> {
    ensure!(
        status.code() == Some(2),
        "exit status {status:?}, stderr: {lines:#?}"
    );
    let failures: Vec<&String> = lines.iter().filter(|l| l.starts_with(PREFIX)).collect();
    ensure!(
        failures.len() == 1,
        "expected exactly one {PREFIX:?} line, got {failures:#?} in {lines:#?}"
    );
    let line = failures[0].clone();
    ensure!(
        line.starts_with(expected),
        "{line:?} does not start with {expected:?}"
    );
    ensure!(
        line.contains(" (fix: ") && line.ends_with(')'),
        "no fix in {line:?}"
    );
    ensure!(
        !lines
            .iter()
            .any(|l| l.contains("panicked") || l.contains("RUST_BACKTRACE")),
        "no panic or backtrace expected: {lines:#?}"
    );
    Ok(line)
}

/// `control-plane run` with a fresh data directory and a process runtime.
fn control_plane_run(data_dir: &std::path::Path, bootstrap: &str) -> Command {
    let mut command = Command::new(&binaries().control_plane);
    command
        .arg("run")
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("CP_LISTEN", "127.0.0.1:0")
        .env("CP_DATA_DIR", data_dir)
        .env("CP_RUNTIME", "process")
        .env("CP_WORKER_BIN", &binaries().worker)
        .env("STARTUP_CHECK_TIMEOUT_SECS", "1")
        .env("STARTUP_CHECK_RETRIES", "1")
        .env_remove("MIN_FREE_DISK_MB")
        .env("RUST_LOG", "info,rdkafka=warn");
    command
}

/// A worker listening on any free port.
fn worker(role: &str, data_dir: &std::path::Path, bootstrap: &str) -> Command {
    let mut command = Command::new(&binaries().worker);
    command
        .args(["--role", role])
        .env("CLIENT_ID", "startup-01")
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("WORKER_LISTEN", "127.0.0.1:0")
        .env("WORKER_DATA_DIR", data_dir)
        .env("STARTUP_CHECK_TIMEOUT_SECS", "1")
        .env("STARTUP_CHECK_RETRIES", "1")
        .env_remove("MIN_FREE_DISK_MB")
        .env("RUST_LOG", "info,rdkafka=warn");
    command
}

/// A path whose parent is a regular file: it can never be created.
fn path_under_a_file(temp: &tempfile::TempDir) -> Result<std::path::PathBuf> {
    let file = temp.path().join("not-a-dir");
    std::fs::write(&file, b"a regular file")?;
    Ok(file.join("data"))
}

#[test]
fn the_control_plane_exits_2_with_one_line_when_kafka_is_unreachable() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir = temp.path().join("data");
    let mut plane = Running::spawn(control_plane_run(&data_dir, "127.0.0.1:1"))?;
    let (status, elapsed, lines) = plane.exit_within(Duration::from_secs(20))?;
    let line = one_failure_line(
        status,
        &lines,
        "startup check failed: kafka: cannot reach 127.0.0.1:1 within 1s",
    )?;
    ensure!(
        line.ends_with("(fix: set KAFKA_BOOTSTRAP_SERVERS to a reachable broker)"),
        "{line}"
    );
    // Two attempts of 1 s and a pause of 1 s, plus start-up.
    ensure!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    ensure!(
        !data_dir.join("api.addr").exists(),
        "the API must not have started"
    );
    Ok(())
}

#[test]
fn the_control_plane_exits_2_when_its_data_directory_cannot_be_created() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir = path_under_a_file(&temp)?;
    let mut plane = Running::spawn(control_plane_run(&data_dir, "127.0.0.1:1"))?;
    let (status, elapsed, lines) = plane.exit_within(Duration::from_secs(20))?;
    let line = one_failure_line(
        status,
        &lines,
        &format!(
            "startup check failed: data directory: cannot create {}",
            data_dir.display()
        ),
    )?;
    ensure!(line.contains("CP_DATA_DIR"), "{line}");
    ensure!(
        elapsed < Duration::from_secs(5),
        "a local check fails at once, took {elapsed:?}"
    );
    Ok(())
}

#[test]
fn the_control_plane_exits_2_when_the_docker_runtime_cannot_reach_docker() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let mut command = control_plane_run(&temp.path().join("data"), "127.0.0.1:1");
    command
        .env("CP_RUNTIME", "docker")
        .env(
            "DOCKER_HOST",
            format!("unix://{}", temp.path().join("no-docker.sock").display()),
        )
        .env("STARTUP_CHECK_RETRIES", "0");
    let mut plane = Running::spawn(command)?;
    let (status, _, lines) = plane.exit_within(Duration::from_secs(20))?;
    let line = one_failure_line(status, &lines, "startup check failed: docker: ")?;
    ensure!(line.contains("CP_RUNTIME=process"), "{line}");
    Ok(())
}

#[test]
fn invalid_check_settings_exit_2_naming_the_variable() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let mut command = control_plane_run(&temp.path().join("data"), "127.0.0.1:1");
    command.env("STARTUP_CHECK_TIMEOUT_SECS", "soon");
    let mut plane = Running::spawn(command)?;
    let (status, _, lines) = plane.exit_within(Duration::from_secs(20))?;
    one_failure_line(
        status,
        &lines,
        "startup check failed: settings: STARTUP_CHECK_TIMEOUT_SECS=\"soon\"",
    )?;
    Ok(())
}

#[test]
fn create_topics_exits_2_when_kafka_stays_unreachable() -> Result<()> {
    let mut command = Command::new(&binaries().control_plane);
    command
        .arg("create-topics")
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("KAFKA_WAIT_SECS", "1")
        .env("STARTUP_CHECK_TIMEOUT_SECS", "1")
        .env("STARTUP_CHECK_RETRIES", "0");
    let mut run = Running::spawn(command)?;
    let (status, elapsed, lines) = run.exit_within(Duration::from_secs(20))?;
    one_failure_line(
        status,
        &lines,
        "startup check failed: kafka: cannot reach 127.0.0.1:1",
    )?;
    ensure!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    Ok(())
}

#[test]
fn a_worker_exits_2_with_one_line_when_kafka_is_unreachable() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let mut run = Running::spawn(worker("event-normalizer", temp.path(), "127.0.0.1:1"))?;
    let (status, elapsed, lines) = run.exit_within(Duration::from_secs(20))?;
    let line = one_failure_line(
        status,
        &lines,
        "startup check failed: kafka: cannot reach 127.0.0.1:1 within 1s",
    )?;
    ensure!(line.contains("KAFKA_BOOTSTRAP_SERVERS"), "{line}");
    ensure!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    ensure!(
        !lines.iter().any(|l| l.contains("worker started")),
        "{lines:#?}"
    );
    Ok(())
}

#[test]
fn a_graph_builder_exits_2_when_its_data_directory_cannot_be_created() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir = path_under_a_file(&temp)?;
    let mut run = Running::spawn(worker("graph-builder", &data_dir, "127.0.0.1:1"))?;
    let (status, elapsed, lines) = run.exit_within(Duration::from_secs(20))?;
    let line = one_failure_line(
        status,
        &lines,
        &format!(
            "startup check failed: data directory: cannot create {}",
            data_dir.display()
        ),
    )?;
    ensure!(line.contains("WORKER_DATA_DIR"), "{line}");
    ensure!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    Ok(())
}

/// `startup checks done … elapsed_ms=N` from the log lines.
fn checks_elapsed_ms(lines: &[String]) -> Option<u64> {
    lines
        .iter()
        .find(|line| line.contains("startup checks done"))?
        .split_whitespace()
        .find_map(|field| field.strip_prefix("elapsed_ms="))?
        .parse()
        .ok()
}

#[test]
fn a_worker_against_the_embedded_broker_passes_its_checks_quickly_and_starts() -> Result<()> {
    let broker = Broker::start()?;
    let temp = tempfile::tempdir()?;
    for role in ["event-normalizer", "graph-builder"] {
        let run = Running::spawn(worker(role, temp.path(), &broker.bootstrap))?;
        let lines = poll(
            &format!("the {role} to start"),
            Duration::from_secs(30),
            || {
                let lines = run.stderr();
                lines
                    .iter()
                    .any(|line| line.contains("worker started"))
                    .then_some(lines)
            },
        )
        .with_context(|| format!("stderr: {:#?}", run.stderr()))?;
        ensure!(
            !lines.iter().any(|line| line.starts_with(PREFIX)),
            "{lines:#?}"
        );
        for check in ["check=\"kafka\"", "check=\"kafka topics\""] {
            ensure!(
                lines
                    .iter()
                    .any(|line| line.contains("check passed") && line.contains(check)),
                "{check} did not pass: {lines:#?}"
            );
        }
        let data_dir_checked = lines
            .iter()
            .any(|line| line.contains("check passed") && line.contains("data directory"));
        ensure!(
            data_dir_checked == (role == "graph-builder"),
            "only the graph builder keeps state on disk: {lines:#?}"
        );
        let elapsed = checks_elapsed_ms(&lines).context("no `startup checks done` line")?;
        ensure!(
            elapsed < 2_000,
            "the checks took {elapsed} ms with a healthy broker"
        );
        drop(run); // SIGKILL
    }
    Ok(())
}

#[test]
fn the_control_plane_against_the_embedded_broker_passes_its_checks() -> Result<()> {
    let broker = Broker::start()?;
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let log = std::fs::read_to_string(plane.data_dir.join("control-plane.log"))?;
    for check in [
        "check=\"data directory\"",
        "check=\"kafka\"",
        "check=\"kafka topics\"",
    ] {
        ensure!(
            log.lines()
                .any(|line| line.contains("check passed") && line.contains(check)),
            "{check} did not pass:\n{}",
            plane.log_tail()
        );
    }
    Ok(())
}

/// A templates file with an error stops the control plane before its API starts: it exits
/// non-zero with one line naming the file, the line and the field.
#[test]
fn the_control_plane_refuses_a_broken_pipelines_file_naming_the_line_and_field() -> Result<()> {
    // A reachable broker, so that the start-up checks pass and the file is what fails.
    let broker = Broker::start()?;
    let temp = tempfile::tempdir()?;
    let data_dir = temp.path().join("data");
    let file = temp.path().join("pipelines.toml");
    std::fs::write(
        &file,
        "[[pipeline]]\nname = \"p\"\ninput = [\"a\"]\noutput = \"b\"\ndefault = true\n\n[[pipeline.stage]]\nkind = \"flatten\"\nfeilds = {}\n",
    )?;
    let mut command = control_plane_run(&data_dir, &broker.bootstrap);
    command.env("CP_PIPELINES_FILE", &file);
    let mut plane = Running::spawn(command)?;
    let status = poll("the control plane to exit", Duration::from_secs(30), || {
        plane.child.try_wait().ok().flatten()
    })
    .with_context(|| format!("it kept running; stderr: {:#?}", plane.stderr()))?;
    ensure!(!status.success(), "exit status {status:?}");
    let expected = format!(
        "{}:9:1: pipeline[0].stage[0].feilds: unknown field `feilds`",
        file.display()
    );
    // The reader thread ends at EOF, right after the exit.
    let lines = poll("the error on stderr", Duration::from_secs(5), || {
        let lines = plane.stderr();
        lines
            .iter()
            .any(|line| line.contains(&expected))
            .then_some(lines)
    })
    .with_context(|| format!("no {expected:?} in stderr: {:#?}", plane.stderr()))?;
    ensure!(
        lines.iter().filter(|line| line.contains("feilds")).count() == 1,
        "the error is said once: {lines:#?}"
    );
    ensure!(
        !lines
            .iter()
            .any(|l| l.contains("panicked") || l.contains("RUST_BACKTRACE")),
        "no panic or backtrace expected: {lines:#?}"
    );
    ensure!(
        !data_dir.join("api.addr").exists(),
        "the API must not have started"
    );
    Ok(())
}
