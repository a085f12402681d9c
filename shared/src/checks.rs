//! Start-up checks both binaries run before they do anything else: the data directory
//! exists (or can be created), is writable and has room; Kafka answers a metadata request
//! with the configured client settings; the topics a process reads exist. Each [`Check`]
//! has a timeout per attempt, a number of retries and is required or optional;
//! [`run_checks`] runs them in order, logs each result, and returns the first required
//! failure as a [`StartupFailure`], whose `Display` is the one line `main` prints before
//! it exits with [`EXIT_CODE`]:
//!
//! ```text
//! startup check failed: kafka: cannot reach localhost:9092 within 10s (4 attempts) (fix: set KAFKA_BOOTSTRAP_SERVERS to a reachable broker)
//! ```
//!
//! Timeouts, retries and the free-space floor come from the environment
//! ([`StartupCheckSettings::from_env`]: `STARTUP_CHECK_TIMEOUT_SECS`,
//! `STARTUP_CHECK_RETRIES`, `MIN_FREE_DISK_MB`), so that both binaries read them the same
//! way without touching their command lines.
//!
//! When everything is fine the checks cost one metadata request and one small file write:
//! tests start hundreds of workers.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{info, warn};

use crate::kafka::KafkaArgs;

/// The exit code of a process whose required start-up check failed (the same code clap
/// uses for invalid settings: "the configuration is wrong", not "the program crashed").
pub const EXIT_CODE: i32 = 2;

/// The prefix of the line printed for a failed required check.
pub const FAILURE_PREFIX: &str = "startup check failed";

const MIB: u64 = 1024 * 1024;

/// What went wrong in one attempt of a check, and what the operator should do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    /// What is wrong, naming the thing checked ("cannot reach kafka:9092 within 10s").
    pub what: String,
    /// How to fix it ("set KAFKA_BOOTSTRAP_SERVERS to a reachable broker").
    pub fix: String,
    /// Retrying cannot help (invalid settings, a path that is a file): fail at once.
    pub permanent: bool,
}

impl CheckFailure {
    /// A failure that may go away (a broker still starting): the check is retried.
    pub fn new(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            fix: fix.into(),
            permanent: false,
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            permanent: true,
            ..Self::new(what, fix)
        }
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (fix: {})", one_line(&self.what), one_line(&self.fix))
    }
}

/// The future a probe returns: a detail for the log when the check passes.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<String, CheckFailure>> + Send>>;

/// One attempt of a check. It receives the attempt's timeout so that blocking calls
/// inside (librdkafka's metadata request) can be bounded by it too.
pub type Probe = Box<dyn Fn(Duration) -> ProbeFuture + Send + Sync>;

/// What an attempt that ran out of time reports, given the timeout.
pub type TimeoutFailure = Box<dyn Fn(Duration) -> CheckFailure + Send + Sync>;

/// One start-up check.
pub struct Check {
    /// Short, lowercase, used in logs and in the failure line ("kafka", "data directory").
    pub name: &'static str,
    /// A failed required check stops the process; an optional one is logged.
    pub required: bool,
    /// Bound on one attempt.
    pub timeout: Duration,
    /// Attempts after the first one (0: one attempt only).
    pub retries: u32,
    /// Pause between attempts.
    pub retry_delay: Duration,
    /// The attempt itself.
    pub probe: Probe,
    /// The failure reported when an attempt exceeds [`Self::timeout`].
    pub on_timeout: TimeoutFailure,
}

impl Check {
    /// A required check with one attempt of 10 s; adjust with the builder methods.
    pub fn new<F, Fut>(name: &'static str, probe: F) -> Self
    where
        F: Fn(Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, CheckFailure>> + Send + 'static,
    {
        Self {
            name,
            required: true,
            timeout: Duration::from_secs(10),
            retries: 0,
            retry_delay: Duration::from_secs(1),
            probe: Box::new(move |timeout| Box::pin(probe(timeout))),
            on_timeout: Box::new(move |timeout| {
                CheckFailure::new(
                    format!("no answer within {}", human(timeout)),
                    "find out why it hangs, or raise STARTUP_CHECK_TIMEOUT_SECS",
                )
            }),
        }
    }

    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    pub fn on_timeout(
        mut self,
        failure: impl Fn(Duration) -> CheckFailure + Send + Sync + 'static,
    ) -> Self {
        self.on_timeout = Box::new(failure);
        self
    }
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("required", &self.required)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("retry_delay", &self.retry_delay)
            .finish_non_exhaustive()
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub name: &'static str,
    pub required: bool,
    /// Attempts made (1 when the first one answered).
    pub attempts: u32,
    pub elapsed: Duration,
    /// The detail of a pass, or the last attempt's failure.
    pub outcome: Result<String, CheckFailure>,
}

/// A required check that failed: its `Display` is the one line printed before exiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupFailure {
    pub check: &'static str,
    pub attempts: u32,
    pub failure: CheckFailure,
}

impl fmt::Display for StartupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{FAILURE_PREFIX}: {}: {}",
            self.check,
            one_line(&self.failure.what)
        )?;
        if self.attempts > 1 {
            write!(f, " ({} attempts)", self.attempts)?;
        }
        write!(f, " (fix: {})", one_line(&self.failure.fix))
    }
}

impl std::error::Error for StartupFailure {}

/// Runs `checks` in order; each attempt is bounded by the check's timeout and failed
/// attempts are retried. Logs `check passed` or `optional check failed` per check and
/// returns the reports, or the first required failure (later checks are not run).
pub async fn run_checks(checks: Vec<Check>) -> Result<Vec<CheckReport>, StartupFailure> {
    let started = Instant::now();
    let mut reports = Vec::with_capacity(checks.len());
    for check in checks {
        let report = run_one(&check).await;
        match &report.outcome {
            Ok(detail) => info!(
                check = check.name,
                %detail,
                attempts = report.attempts,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "check passed"
            ),
            Err(failure) if !check.required => warn!(
                check = check.name,
                what = %failure.what,
                fix = %failure.fix,
                attempts = report.attempts,
                "optional check failed"
            ),
            Err(failure) => {
                return Err(StartupFailure {
                    check: check.name,
                    attempts: report.attempts,
                    failure: failure.clone(),
                })
            }
        }
        reports.push(report);
    }
    info!(
        checks = reports.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "startup checks done"
    );
    Ok(reports)
}

async fn run_one(check: &Check) -> CheckReport {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = match tokio::time::timeout(check.timeout, (check.probe)(check.timeout)).await
        {
            Ok(outcome) => outcome,
            Err(_) => Err((check.on_timeout)(check.timeout)),
        };
        match outcome {
            Err(failure) if !failure.permanent && attempts <= check.retries => {
                warn!(
                    check = check.name,
                    attempt = attempts,
                    of = check.retries + 1,
                    what = %failure.what,
                    "check attempt failed; retrying"
                );
                tokio::time::sleep(check.retry_delay).await;
            }
            outcome => {
                return CheckReport {
                    name: check.name,
                    required: check.required,
                    attempts,
                    elapsed: started.elapsed(),
                    outcome,
                }
            }
        }
    }
}

/// Runs the checks; on a required failure prints its one line to standard error and exits
/// with [`EXIT_CODE`]. For `main`.
pub async fn run_or_exit(checks: Vec<Check>) -> Vec<CheckReport> {
    match run_checks(checks).await {
        Ok(reports) => reports,
        Err(failure) => exit_with(&failure),
    }
}

/// Prints `failure` as one line to standard error and exits with [`EXIT_CODE`].
pub fn exit_with(failure: &StartupFailure) -> ! {
    eprintln!("{failure}");
    std::process::exit(EXIT_CODE)
}

/// How the checks run: read from the environment by both binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupCheckSettings {
    /// `STARTUP_CHECK_TIMEOUT_SECS` (10): bound on one attempt of a network check.
    pub timeout: Duration,
    /// `STARTUP_CHECK_RETRIES` (3): attempts after the first one for network checks.
    pub retries: u32,
    /// Pause between attempts (1 s).
    pub retry_delay: Duration,
    /// `MIN_FREE_DISK_MB` (100): free space the data directory's volume must have, MiB.
    pub min_free_disk_mib: u64,
}

impl Default for StartupCheckSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retries: 3,
            retry_delay: Duration::from_secs(1),
            min_free_disk_mib: 100,
        }
    }
}

impl StartupCheckSettings {
    /// Reads `STARTUP_CHECK_TIMEOUT_SECS`, `STARTUP_CHECK_RETRIES` and `MIN_FREE_DISK_MB`;
    /// unset or empty means the default, anything else must be a whole number (the
    /// timeout at least 1).
    pub fn from_env() -> Result<Self, StartupFailure> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Self::from_env`], or the failure line and [`EXIT_CODE`]. For `main`.
    pub fn from_env_or_exit() -> Self {
        Self::from_env().unwrap_or_else(|failure| exit_with(&failure))
    }

    /// [`Self::from_env`] over any source of variables (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, StartupFailure> {
        let defaults = Self::default();
        let number = |name: &'static str, default: u64, min: u64| -> Result<u64, StartupFailure> {
            let Some(raw) = lookup(name).filter(|raw| !raw.trim().is_empty()) else {
                return Ok(default);
            };
            match raw.trim().parse::<u64>() {
                Ok(value) if value >= min => Ok(value),
                _ => Err(StartupFailure {
                    check: "settings",
                    attempts: 1,
                    failure: CheckFailure::permanent(
                        format!("{name}={raw:?} is not a whole number of at least {min}"),
                        format!("set {name} to a number such as {default}, or unset it"),
                    ),
                }),
            }
        };
        let retries = number("STARTUP_CHECK_RETRIES", u64::from(defaults.retries), 0)?;
        Ok(Self {
            timeout: Duration::from_secs(number(
                "STARTUP_CHECK_TIMEOUT_SECS",
                defaults.timeout.as_secs(),
                1,
            )?),
            retries: u32::try_from(retries).unwrap_or(u32::MAX),
            retry_delay: defaults.retry_delay,
            min_free_disk_mib: number("MIN_FREE_DISK_MB", defaults.min_free_disk_mib, 0)?,
        })
    }

    /// These settings with enough retries to keep trying for about `total` (at least
    /// the configured retries): for `create-topics`, which waits for a cluster that is
    /// still starting.
    pub fn waiting(mut self, total: Duration) -> Self {
        let per_attempt = (self.timeout + self.retry_delay).as_secs_f64().max(0.001);
        let wanted = (total.as_secs_f64() / per_attempt).ceil() as u32;
        self.retries = self.retries.max(wanted.saturating_sub(1));
        self
    }

    /// A required check with these settings' timeout and retries (for checks defined
    /// elsewhere, such as the control plane's Docker ping).
    pub fn check<F, Fut>(&self, name: &'static str, probe: F) -> Check
    where
        F: Fn(Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, CheckFailure>> + Send + 'static,
    {
        Check::new(name, probe)
            .timeout(self.timeout)
            .retries(self.retries)
            .retry_delay(self.retry_delay)
    }

    /// Required: `path` exists or can be created, a file can be created, written, synced
    /// and removed in it, and its volume has [`Self::min_free_disk_mib`] free. `setting`
    /// names the variable that sets the path, for the fix. Not retried: a path under a
    /// file or a full disk does not fix itself in seconds.
    pub fn data_dir(&self, path: &Path, setting: &'static str) -> Check {
        let path = path.to_path_buf();
        let min_free_mib = self.min_free_disk_mib;
        self.check("data directory", move |_| {
            let path = path.clone();
            async move {
                tokio::task::spawn_blocking(move || probe_data_dir(&path, setting, min_free_mib))
                    .await
                    .unwrap_or_else(|error| {
                        Err(CheckFailure::new(
                            format!("the check did not finish: {error}"),
                            "run it again",
                        ))
                    })
            }
        })
        .retries(0)
        .on_timeout(move |timeout| {
            CheckFailure::new(
                format!("no answer from the file system within {}", human(timeout)),
                format!("check the volume behind {setting} (a hung network mount?)"),
            )
        })
    }

    /// Kafka answers a metadata request made with `kafka`'s client settings (required),
    /// then, when `topics` is not empty, those topics exist (required when
    /// `topics_required`, else logged). Both use the one metadata request.
    pub fn kafka_checks(
        &self,
        kafka: &KafkaArgs,
        topics: &[&str],
        topics_required: bool,
    ) -> Vec<Check> {
        let seen: TopicCache = Arc::default();
        let mut checks = vec![self.kafka_reachable(kafka, seen.clone())];
        if !topics.is_empty() {
            checks.push(self.kafka_topics(kafka, topics, topics_required, seen));
        }
        checks
    }

    fn kafka_reachable(&self, kafka: &KafkaArgs, seen: TopicCache) -> Check {
        let bootstrap = kafka.bootstrap_servers.clone();
        let fix = kafka_fix(kafka);
        let kafka = kafka.clone();
        self.check("kafka", move |timeout| {
            let kafka = kafka.clone();
            let seen = seen.clone();
            async move {
                let (brokers, topics) = fetch_topics(kafka, timeout).await?;
                let detail = format!(
                    "{}: {brokers} broker(s), {} topic(s)",
                    redact_bootstrap(&topics.bootstrap),
                    topics.names.len()
                );
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(topics.names);
                Ok(detail)
            }
        })
        .on_timeout(move |timeout| {
            CheckFailure::new(
                format!("cannot reach {bootstrap} within {}", human(timeout)),
                fix.clone(),
            )
        })
    }

    fn kafka_topics(
        &self,
        kafka: &KafkaArgs,
        topics: &[&str],
        required: bool,
        seen: TopicCache,
    ) -> Check {
        let wanted: Vec<String> = topics.iter().map(|topic| topic.to_string()).collect();
        let bootstrap = kafka.bootstrap_servers.clone();
        let fix = kafka_fix(kafka);
        let kafka = kafka.clone();
        let check = self
            .check("kafka topics", move |timeout| {
                let kafka = kafka.clone();
                let seen = seen.clone();
                let wanted = wanted.clone();
                async move {
                    // The reachability check's answer is used once; a retry asks again.
                    let cached = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
                    let (names, bootstrap) = match cached {
                        Some(names) => (names, kafka.bootstrap_servers.clone()),
                        None => {
                            let (_, topics) = fetch_topics(kafka, timeout).await?;
                            (topics.names, topics.bootstrap)
                        }
                    };
                    let missing: Vec<&str> = wanted
                        .iter()
                        .filter(|topic| !names.contains(topic))
                        .map(String::as_str)
                        .collect();
                    if missing.is_empty() {
                        Ok(format!("{} present", wanted.join(", ")))
                    } else {
                        Err(CheckFailure::new(
                            format!(
                                "topic(s) {} do not exist on {}",
                                missing.join(", "),
                                redact_bootstrap(&bootstrap)
                            ),
                            "run `control-plane create-topics` against this cluster, or point \
                         KAFKA_BOOTSTRAP_SERVERS at the cluster that has them",
                        ))
                    }
                }
            })
            .required(required)
            .on_timeout(move |timeout| {
                CheckFailure::new(
                    format!(
                        "cannot list the topics of {bootstrap} within {}",
                        human(timeout)
                    ),
                    fix.clone(),
                )
            });
        // An optional check is not worth start-up time: ask once.
        if required {
            check
        } else {
            check.retries(0)
        }
    }
}

type TopicCache = Arc<Mutex<Option<Vec<String>>>>;

struct TopicNames {
    bootstrap: String,
    names: Vec<String>,
}

/// One metadata request for every topic (never auto-creates one), off the async threads:
/// librdkafka blocks for up to `timeout`.
async fn fetch_topics(
    kafka: KafkaArgs,
    timeout: Duration,
) -> Result<(usize, TopicNames), CheckFailure> {
    if kafka
        .bootstrap_servers
        .split(',')
        .all(|server| server.trim().is_empty())
    {
        return Err(CheckFailure::permanent(
            "KAFKA_BOOTSTRAP_SERVERS is empty",
            "set KAFKA_BOOTSTRAP_SERVERS to host:port[,host:port…] of your Kafka brokers",
        ));
    }
    tokio::task::spawn_blocking(move || {
        let bootstrap = kafka.bootstrap_servers.clone();
        let consumer: BaseConsumer = kafka
            .client_config()
            .set("client.id", "kg-startup-check")
            .create()
            .map_err(|error| {
                CheckFailure::permanent(
                    format!("invalid kafka client settings: {error}"),
                    "check KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_CA_LOCATION and \
                     KAFKA_EXTRA_CONFIG",
                )
            })?;
        let metadata = consumer
            .fetch_metadata(None, timeout)
            .map_err(|error| unreachable(&kafka, timeout, &error))?;
        let names = metadata
            .topics()
            .iter()
            .map(|topic| topic.name().to_string())
            .collect();
        Ok((metadata.brokers().len(), TopicNames { bootstrap, names }))
    })
    .await
    .unwrap_or_else(|error| {
        Err(CheckFailure::new(
            format!("the kafka check did not finish: {error}"),
            "run it again",
        ))
    })
}

fn unreachable(kafka: &KafkaArgs, timeout: Duration, error: &KafkaError) -> CheckFailure {
    let bootstrap = redact_bootstrap(&kafka.bootstrap_servers);
    let what = match error {
        KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut) => {
            format!("cannot reach {bootstrap} within {}", human(timeout))
        }
        KafkaError::MetadataFetch(code) => {
            format!("cannot reach {bootstrap} within {}: {code}", human(timeout))
        }
        other => format!("cannot reach {bootstrap}: {other}"),
    };
    CheckFailure::new(what, kafka_fix(kafka))
}

fn kafka_fix(kafka: &KafkaArgs) -> String {
    let mut fix = String::from("set KAFKA_BOOTSTRAP_SERVERS to a reachable broker");
    if !kafka.security_protocol.eq_ignore_ascii_case("plaintext") {
        fix.push_str(&format!(
            " and check KAFKA_SECURITY_PROTOCOL ({}), KAFKA_SASL_* and KAFKA_SSL_CA_LOCATION",
            kafka.security_protocol
        ));
    } else if kafka.sasl_username.is_some() || kafka.ssl_ca_location.is_some() {
        fix.push_str("; SASL or TLS settings are given but KAFKA_SECURITY_PROTOCOL is plaintext");
    }
    fix
}

/// Bootstrap lists never carry secrets in this project, but keep the line short.
fn redact_bootstrap(bootstrap: &str) -> String {
    const MAX: usize = 200;
    if bootstrap.len() <= MAX {
        bootstrap.to_string()
    } else {
        let cut = (0..=MAX)
            .rev()
            .find(|&i| bootstrap.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}…", &bootstrap[..cut])
    }
}

/// The data directory probe: create, write + fsync + remove a file, measure free space.
pub fn probe_data_dir(
    path: &Path,
    setting: &str,
    min_free_mib: u64,
) -> Result<String, CheckFailure> {
    if path.as_os_str().is_empty() {
        return Err(CheckFailure::permanent(
            format!("{setting} is empty"),
            format!("set {setting} to a directory path"),
        ));
    }
    let shown = path.display();
    std::fs::create_dir_all(path).map_err(|error| {
        CheckFailure::permanent(
            format!("cannot create {shown}: {error}"),
            format!("point {setting} at a directory this user can create and write"),
        )
    })?;
    if !path.is_dir() {
        return Err(CheckFailure::permanent(
            format!("{shown} is not a directory"),
            format!("point {setting} at a directory"),
        ));
    }
    let probe: PathBuf = path.join(format!(".startup-check-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)?;
        file.write_all(b"kg startup check\n")?;
        file.sync_all()?;
        std::fs::remove_file(&probe)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&probe);
        return Err(CheckFailure::permanent(
            format!("cannot write to {shown}: {error}"),
            format!(
                "make {shown} writable by this process's user, or point {setting} at a writable \
                 directory"
            ),
        ));
    }
    let stats = nix::sys::statvfs::statvfs(path).map_err(|error| {
        CheckFailure::permanent(
            format!("cannot read the free space of {shown}: {error}"),
            format!("point {setting} at a directory on a local volume"),
        )
    })?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    let free_mib =
        (stats.blocks_available() as u64).saturating_mul(stats.fragment_size() as u64) / MIB;
    if free_mib < min_free_mib {
        return Err(CheckFailure::permanent(
            format!("only {free_mib} MiB free on {shown}, at least {min_free_mib} MiB needed"),
            format!(
                "free space on that volume, point {setting} at a larger one, or lower \
                 MIN_FREE_DISK_MB"
            ),
        ));
    }
    Ok(format!("{shown} writable, {free_mib} MiB free"))
}

/// `10s`, `1500ms`.
fn human(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// The failure line must stay one line whatever an underlying error says.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick(name: &'static str) -> impl FnOnce(Check) -> Check {
        move |check: Check| {
            assert_eq!(check.name, name);
            check
                .timeout(Duration::from_millis(200))
                .retry_delay(Duration::from_millis(1))
        }
    }

    fn counting(
        fail_first: u32,
        failure: CheckFailure,
    ) -> (
        Arc<AtomicU32>,
        impl Fn(Duration) -> ProbeFuture + Send + Sync,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let probe = move |_| -> ProbeFuture {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let failure = failure.clone();
            Box::pin(async move {
                if n <= fail_first {
                    Err(failure)
                } else {
                    Ok(format!("ok after {n}"))
                }
            })
        };
        (calls, probe)
    }

    #[tokio::test]
    async fn a_check_that_fails_then_passes_is_retried_until_it_passes() {
        let (calls, probe) = counting(2, CheckFailure::new("down", "wait"));
        let check = quick("flaky")(Check::new("flaky", probe).retries(3));
        let reports = run_checks(vec![check]).await.expect("passes");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(reports[0].attempts, 3);
        assert_eq!(reports[0].outcome, Ok("ok after 3".into()));
    }

    #[tokio::test]
    async fn a_required_check_that_keeps_failing_stops_the_run_with_one_line() {
        let (calls, probe) = counting(u32::MAX, CheckFailure::new("cannot reach x", "fix x"));
        let (later_calls, later) = counting(0, CheckFailure::new("-", "-"));
        let checks = vec![
            quick("kafka")(Check::new("kafka", probe).retries(1)),
            quick("later")(Check::new("later", later)),
        ];
        let failure = run_checks(checks).await.expect_err("fails");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            later_calls.load(Ordering::SeqCst),
            0,
            "later checks do not run"
        );
        assert_eq!(
            failure.to_string(),
            "startup check failed: kafka: cannot reach x (2 attempts) (fix: fix x)"
        );
    }

    #[tokio::test]
    async fn a_permanent_failure_is_not_retried() {
        let (calls, probe) = counting(u32::MAX, CheckFailure::permanent("bad", "fix"));
        let check = quick("settings")(Check::new("settings", probe).retries(5));
        let failure = run_checks(vec![check]).await.expect_err("fails");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            failure.to_string(),
            "startup check failed: settings: bad (fix: fix)"
        );
    }

    #[tokio::test]
    async fn an_optional_failure_is_reported_and_the_next_checks_run() {
        let (_, failing) = counting(u32::MAX, CheckFailure::new("missing", "create it"));
        let (later_calls, later) = counting(0, CheckFailure::new("-", "-"));
        let checks = vec![
            quick("topics")(Check::new("topics", failing).required(false)),
            quick("later")(Check::new("later", later)),
        ];
        let reports = run_checks(checks)
            .await
            .expect("optional failures do not stop");
        assert_eq!(later_calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            reports[0].outcome,
            Err(CheckFailure::new("missing", "create it"))
        );
        assert!(reports[1].outcome.is_ok());
    }

    #[tokio::test]
    async fn an_attempt_that_hangs_is_cut_at_its_timeout() {
        let check = Check::new("hang", |_| std::future::pending())
            .timeout(Duration::from_millis(50))
            .on_timeout(|timeout| CheckFailure::new(format!("silent for {}", human(timeout)), "x"));
        let started = Instant::now();
        let failure = run_checks(vec![check]).await.expect_err("times out");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            failure.to_string(),
            "startup check failed: hang: silent for 50ms (fix: x)"
        );
    }

    #[test]
    fn the_failure_line_stays_one_line() {
        let failure = StartupFailure {
            check: "docker",
            attempts: 1,
            failure: CheckFailure::new("no\nsocket\r\n here", "start\ndocker"),
        };
        assert_eq!(
            failure.to_string(),
            "startup check failed: docker: no socket here (fix: start docker)"
        );
    }

    #[test]
    fn a_data_dir_that_can_be_created_and_written_passes_and_leaves_nothing_behind() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("a/b");
        let detail = probe_data_dir(&dir, "CP_DATA_DIR", 0).expect("writable");
        assert!(detail.contains("writable"), "{detail}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn a_data_dir_under_a_regular_file_fails_naming_the_setting() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let failure = probe_data_dir(&file.join("data"), "WORKER_DATA_DIR", 0).unwrap_err();
        assert!(failure.permanent);
        assert!(
            failure.what.starts_with("cannot create "),
            "{}",
            failure.what
        );
        assert!(failure.fix.contains("WORKER_DATA_DIR"), "{}", failure.fix);
    }

    #[test]
    fn a_data_dir_that_is_a_file_fails() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let failure = probe_data_dir(&file, "CP_DATA_DIR", 0).unwrap_err();
        assert!(
            failure.what.starts_with("cannot create "),
            "{}",
            failure.what
        );
    }

    #[test]
    fn a_data_dir_without_enough_free_space_fails() {
        let temp = tempfile::tempdir().unwrap();
        let failure = probe_data_dir(temp.path(), "CP_DATA_DIR", u64::MAX / MIB).unwrap_err();
        assert!(failure.what.starts_with("only "), "{}", failure.what);
        assert!(failure.fix.contains("MIN_FREE_DISK_MB"), "{}", failure.fix);
    }

    #[test]
    fn an_empty_data_dir_setting_is_invalid() {
        let failure = probe_data_dir(Path::new(""), "CP_DATA_DIR", 0).unwrap_err();
        assert_eq!(failure.what, "CP_DATA_DIR is empty");
    }

    #[test]
    fn settings_default_when_unset_and_read_the_variables_when_set() {
        let defaults = StartupCheckSettings::from_lookup(|_| None).unwrap();
        assert_eq!(defaults, StartupCheckSettings::default());
        assert_eq!(defaults.timeout, Duration::from_secs(10));
        assert_eq!(defaults.retries, 3);
        assert_eq!(defaults.min_free_disk_mib, 100);
        let set = StartupCheckSettings::from_lookup(|name| {
            Some(
                match name {
                    "STARTUP_CHECK_TIMEOUT_SECS" => "2",
                    "STARTUP_CHECK_RETRIES" => "0",
                    "MIN_FREE_DISK_MB" => "5",
                    _ => return None,
                }
                .to_string(),
            )
        })
        .unwrap();
        assert_eq!(set.timeout, Duration::from_secs(2));
        assert_eq!(set.retries, 0);
        assert_eq!(set.min_free_disk_mib, 5);
    }

    #[test]
    fn invalid_settings_fail_with_the_variable_named() {
        let failure = StartupCheckSettings::from_lookup(|name| {
            (name == "STARTUP_CHECK_TIMEOUT_SECS").then(|| "0".to_string())
        })
        .unwrap_err();
        assert_eq!(
            failure.to_string(),
            "startup check failed: settings: STARTUP_CHECK_TIMEOUT_SECS=\"0\" is not a whole \
             number of at least 1 (fix: set STARTUP_CHECK_TIMEOUT_SECS to a number such as 10, \
             or unset it)"
        );
        assert!(StartupCheckSettings::from_lookup(|name| {
            (name == "MIN_FREE_DISK_MB").then(|| "lots".to_string())
        })
        .is_err());
    }

    #[test]
    fn waiting_retries_long_enough_to_cover_the_wait() {
        let settings = StartupCheckSettings::default().waiting(Duration::from_secs(120));
        // 11 s per attempt: 11 attempts cover 120 s.
        assert_eq!(settings.retries, 10);
        let short = StartupCheckSettings::default().waiting(Duration::from_secs(1));
        assert_eq!(short.retries, 3, "never fewer than configured");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_broker_fails_naming_the_bootstrap_servers_and_the_fix() {
        let settings = StartupCheckSettings {
            timeout: Duration::from_secs(1),
            retries: 0,
            ..StartupCheckSettings::default()
        };
        let checks = settings.kafka_checks(&KafkaArgs::plaintext("127.0.0.1:1"), &["a"], true);
        let started = Instant::now();
        let failure = run_checks(checks).await.expect_err("unreachable");
        assert!(started.elapsed() < Duration::from_secs(5));
        let line = failure.to_string();
        assert!(
            line.starts_with("startup check failed: kafka: cannot reach 127.0.0.1:1 within 1s"),
            "{line}"
        );
        assert!(
            line.ends_with("(fix: set KAFKA_BOOTSTRAP_SERVERS to a reachable broker)"),
            "{line}"
        );
    }

    #[tokio::test]
    async fn empty_bootstrap_servers_fail_at_once() {
        let checks =
            StartupCheckSettings::default().kafka_checks(&KafkaArgs::plaintext(" , "), &[], true);
        let started = Instant::now();
        let failure = run_checks(checks).await.expect_err("invalid");
        assert!(started.elapsed() < Duration::from_secs(1), "not retried");
        assert_eq!(failure.attempts, 1);
        assert!(failure
            .to_string()
            .starts_with("startup check failed: kafka: KAFKA_BOOTSTRAP_SERVERS is empty (fix: "));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_embedded_broker_passes_and_missing_topics_are_reported() {
        let broker = crate::kafka::EmbeddedBroker::start(1).expect("embedded broker");
        let kafka = KafkaArgs::plaintext(broker.bootstrap_servers());
        let settings = StartupCheckSettings {
            timeout: Duration::from_secs(5),
            retries: 0,
            ..StartupCheckSettings::default()
        };
        let reports = run_checks(settings.kafka_checks(
            &kafka,
            &[
                crate::topics::CLUSTER_REGISTRY,
                crate::topics::CLUSTER_HEARTBEAT,
            ],
            true,
        ))
        .await
        .expect("reachable, topics present");
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].attempts, 1);

        let reports = run_checks(settings.kafka_checks(&kafka, &["no.such.topic"], false))
            .await
            .expect("optional");
        let failure = reports[1].outcome.clone().unwrap_err();
        assert!(failure.what.contains("no.such.topic"), "{}", failure.what);
        assert!(failure.fix.contains("create-topics"), "{}", failure.fix);

        let failure = run_checks(settings.kafka_checks(&kafka, &["no.such.topic"], true))
            .await
            .expect_err("required topics missing");
        assert_eq!(failure.check, "kafka topics");
    }
}
