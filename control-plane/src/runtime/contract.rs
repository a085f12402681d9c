//! The runtime contract: one suite of checks, generic over [`Runtime`], that every
//! implementation must pass (the fake in unit tests, the process runtime with the real
//! worker binary, Docker against the real engine). A check returns an error describing the
//! first broken promise rather than panicking, so callers can add their own context.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use kg_shared::ClientId;

use super::{ObservedWorker, Runtime, RuntimeError, RuntimeState, SharedRoleParts, WorkerSpec};

/// A spec for the contract's worker: a real worker role, so real runtimes can run it; it
/// points at a broker address nobody listens on, which a worker tolerates by retrying.
pub fn contract_spec(client: &str, image: &str) -> WorkerSpec {
    let client = ClientId::parse(client).expect("contract client ids are valid");
    let mut env = BTreeMap::new();
    env.insert("CLIENT_ID".to_string(), client.to_string());
    env.insert(
        "KAFKA_BOOTSTRAP_SERVERS".to_string(),
        "127.0.0.1:1".to_string(),
    );
    let parts = SharedRoleParts {
        role: "event-normalizer".into(),
        instance: None,
        image: image.into(),
        args: vec!["--role".to_string(), "event-normalizer".to_string()].into(),
        env: std::sync::Arc::new(env),
        memory_limit_mb: Some(128),
        cpu_limit: Some(0.5),
        placement: std::sync::Arc::from([]),
    };
    WorkerSpec::new(client, &parts)
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn poll_until<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first promise a runtime broke, with the worker it broke it for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("runtime contract broken: {promise}: {detail}")]
pub struct ContractBroken {
    /// The contract's worker.
    pub worker: String,
    /// What the runtime should have done.
    pub promise: &'static str,
    /// What it did instead (its answer, debug-formatted).
    pub detail: String,
}

fn broken(worker: &str, promise: &'static str, detail: impl std::fmt::Debug) -> ContractBroken {
    ContractBroken {
        worker: worker.to_string(),
        promise,
        detail: format!("{detail:?}"),
    }
}

async fn find(runtime: &dyn Runtime, name: &str) -> Result<Option<ObservedWorker>, ContractBroken> {
    let listed = runtime
        .list()
        .await
        .map_err(|error| broken(name, "list succeeds", error))?;
    Ok(listed.into_iter().find(|worker| &*worker.name == name))
}

/// Runs the whole contract with workers for `client` (a client id no other test uses).
/// `settle` bounds how long a start or stop may take to show in `list`.
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
pub async fn run_contract(
    runtime: &dyn Runtime,
    client: &str,
    image: &str,
    settle: Duration,
) -> Result<(), ContractBroken> {
    let spec = contract_spec(client, image);
    let name = spec.name.clone();
    // Leftovers of an earlier aborted run would make every check below meaningless.
    let _ = runtime.stop(&name, Duration::from_secs(5)).await;
    let _ = runtime.remove(&name).await;

    if find(runtime, &name).await?.is_some() {
        return Err(broken(&name, "a removed worker is not listed", &name));
    }
    match runtime.inspect(&name).await {
        Err(RuntimeError::NotFound(_)) => {}
        other => {
            return Err(broken(
                &name,
                "inspect of an unknown worker is NotFound",
                other,
            ))
        }
    }
    match runtime.start(&name).await {
        Err(RuntimeError::NotFound(_)) => {}
        other => {
            return Err(broken(
                &name,
                "start of an unknown worker is NotFound",
                other,
            ))
        }
    }

    let created = runtime
        .create(&spec)
        .await
        .map_err(|error| broken(&name, "create succeeds", error))?;
    if &*created.client_id != client
        || created.role != spec.role
        || created.spec_hash != spec.spec_hash
    {
        return Err(broken(&name, "create reports the spec's labels", created));
    }
    let listed = find(runtime, &name)
        .await?
        .ok_or_else(|| broken(&name, "a created worker is listed", &name))?;
    if &*listed.client_id != client
        || &*listed.role != "event-normalizer"
        || listed.spec_hash != spec.spec_hash
    {
        return Err(broken(
            &name,
            "list reports client, role and spec hash",
            listed,
        ));
    }
    if matches!(listed.state, RuntimeState::Running { .. }) {
        return Err(broken(
            &name,
            "a created worker is not running before start",
            listed,
        ));
    }
    match runtime.create(&spec).await {
        Err(RuntimeError::Conflict(_)) => {}
        other => return Err(broken(&name, "creating a taken name is Conflict", other)),
    }

    runtime
        .start(&name)
        .await
        .map_err(|error| broken(&name, "start succeeds", error))?;
    let running = poll_until(settle, || async {
        find(runtime, &name)
            .await
            .ok()
            .flatten()
            .filter(|worker| matches!(worker.state, RuntimeState::Running { .. }))
    })
    .await;
    if running.is_none() {
        return Err(broken(
            &name,
            "a started worker is listed as running",
            &name,
        ));
    }
    runtime
        .start(&name)
        .await
        .map_err(|error| broken(&name, "start of a running worker is a no-op", error))?;
    match runtime.remove(&name).await {
        Err(RuntimeError::Conflict(_)) => {}
        other => {
            return Err(broken(
                &name,
                "remove of a running worker is Conflict",
                other,
            ))
        }
    }
    let inspected = runtime
        .inspect(&name)
        .await
        .map_err(|error| broken(&name, "inspect of a running worker succeeds", error))?;
    if !matches!(inspected.state, RuntimeState::Running { .. }) {
        return Err(broken(&name, "inspect agrees with list", inspected));
    }
    runtime
        .logs(&name, 50)
        .await
        .map_err(|error| broken(&name, "logs of a known worker succeed", error))?;
    runtime
        .endpoint(&name)
        .await
        .map_err(|error| broken(&name, "endpoint of a running worker succeeds", error))?;

    runtime
        .stop(&name, Duration::from_secs(10))
        .await
        .map_err(|error| broken(&name, "stop succeeds", error))?;
    let stopped = poll_until(settle, || async {
        find(runtime, &name)
            .await
            .ok()
            .flatten()
            .filter(|worker| matches!(worker.state, RuntimeState::Exited { .. }))
    })
    .await;
    if stopped.is_none() {
        return Err(broken(&name, "a stopped worker is listed as exited", &name));
    }
    runtime
        .stop(&name, Duration::from_secs(1))
        .await
        .map_err(|error| broken(&name, "stop of a stopped worker is a no-op", error))?;

    runtime
        .start(&name)
        .await
        .map_err(|error| broken(&name, "an exited worker can be started again", error))?;
    if poll_until(settle, || async {
        find(runtime, &name)
            .await
            .ok()
            .flatten()
            .filter(|worker| matches!(worker.state, RuntimeState::Running { .. }))
    })
    .await
    .is_none()
    {
        return Err(broken(
            &name,
            "a restarted worker is listed as running",
            &name,
        ));
    }
    runtime
        .stop(&name, Duration::from_secs(10))
        .await
        .map_err(|error| broken(&name, "stop succeeds", error))?;

    runtime
        .remove(&name)
        .await
        .map_err(|error| broken(&name, "remove of a stopped worker succeeds", error))?;
    if find(runtime, &name).await?.is_some() {
        return Err(broken(&name, "a removed worker is not listed", &name));
    }
    match runtime.remove(&name).await {
        Err(RuntimeError::NotFound(_)) => {}
        other => {
            return Err(broken(
                &name,
                "remove of an unknown worker is NotFound",
                other,
            ))
        }
    }
    match runtime.logs(&name, 10).await {
        Err(RuntimeError::NotFound(_)) => {}
        other => {
            return Err(broken(
                &name,
                "logs of an unknown worker are NotFound",
                other,
            ))
        }
    }
    Ok(())
}
