//! The executor: carries out the controller's actions against the runtime, each call cut
//! off after the action timeout (a stop gets the stop grace on top), and reports what
//! became of each as data the controller applies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::events::Lifecycle;
use crate::plan::{RecreateReason, RemoveReason};
use crate::runtime::{ObservedWorker, Runtime, RuntimeError, WorkerSpec};

/// What an action does to its worker, for the worker's phase while it is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Create,
    Recreate,
    Remove,
}

/// A runtime call, as `cp_runtime_errors_total{operation}` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    List,
    Create,
    Start,
    Stop,
    Remove,
    RemoveClientData,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::List => "list",
            Operation::Create => "create",
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Remove => "remove",
            Operation::RemoveClientData => "remove_client_data",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A runtime call of an action that failed; the action is retried on a later pass.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {source}")]
pub struct ActionError {
    pub operation: Operation,
    #[source]
    pub source: RuntimeError,
}

/// One unit of work for the executor.
#[derive(Debug, Clone)]
pub enum Action {
    Create(WorkerSpec),
    Recreate(ObservedWorker, WorkerSpec, RecreateReason),
    Remove(ObservedWorker, RemoveReason),
    /// Deletes a deregistered client's durable data; planned only once none of its
    /// workers exist.
    RemoveData(String),
}

impl Action {
    /// What the action does, for the worker's phase while it is in flight.
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Create(_) => ActionKind::Create,
            Action::Recreate(..) => ActionKind::Recreate,
            Action::Remove(..) | Action::RemoveData(_) => ActionKind::Remove,
        }
    }

    /// What the action works on: a worker name, or `data:<client>` for data removal.
    pub fn target(&self) -> Arc<str> {
        match self {
            Action::Create(spec) => spec.name.clone(),
            Action::Recreate(worker, _, _) | Action::Remove(worker, _) => worker.name.clone(),
            Action::RemoveData(client) => format!("data:{client}").into(),
        }
    }

    pub fn client_id(&self) -> &str {
        match self {
            Action::Create(spec) => spec.client_id.as_str(),
            Action::Recreate(worker, _, _) | Action::Remove(worker, _) => &worker.client_id,
            Action::RemoveData(client) => client,
        }
    }
}

/// What became of an action, fed back to the controller.
pub struct ActionReport {
    /// The action's target (`Action::target`).
    pub name: Arc<str>,
    pub client_id: Arc<str>,
    /// The lifecycle event the action amounts to, or the runtime call that failed.
    pub result: Result<Lifecycle, ActionError>,
}

/// One runtime call, cut off after `timeout`.
async fn call<T>(
    operation: Operation,
    timeout: Duration,
    future: impl Future<Output = Result<T, RuntimeError>>,
) -> Result<T, ActionError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result.map_err(|source| ActionError { operation, source }),
        Err(_) => Err(ActionError {
            operation,
            source: RuntimeError::Timeout {
                operation: operation.as_str(),
                name: String::new(),
                after: timeout,
            },
        }),
    }
}

/// A stop or removal of what is already gone has done its job.
fn tolerate_not_found(result: Result<(), ActionError>) -> Result<(), ActionError> {
    match result {
        Err(ActionError {
            source: RuntimeError::NotFound(_),
            ..
        }) => Ok(()),
        other => other,
    }
}

/// Stops a worker (SIGTERM, then its grace) and removes it; one already gone is fine.
async fn stop_and_remove(
    runtime: &dyn Runtime,
    name: &str,
    timeout: Duration,
    stop_grace: Duration,
) -> Result<(), ActionError> {
    // A stop may legitimately take its whole grace period.
    let stop_timeout = timeout + stop_grace;
    tolerate_not_found(
        call(
            Operation::Stop,
            stop_timeout,
            runtime.stop(name, stop_grace),
        )
        .await,
    )?;
    tolerate_not_found(call(Operation::Remove, timeout, runtime.remove(name)).await)
}

/// Carries out one action; returns the lifecycle event it amounts to.
pub async fn execute(
    runtime: &dyn Runtime,
    action: &Action,
    timeout: Duration,
    stop_grace: Duration,
) -> Result<Lifecycle, ActionError> {
    match action {
        Action::Create(spec) => {
            match call(Operation::Create, timeout, runtime.create(spec)).await {
                Ok(_) => {}
                // Created by an earlier pass whose report was lost: start what is there.
                Err(ActionError {
                    source: RuntimeError::Conflict(_),
                    ..
                }) => {}
                Err(error) => return Err(error),
            }
            call(Operation::Start, timeout, runtime.start(&spec.name)).await?;
            Ok(Lifecycle::WorkerSpawned)
        }
        Action::Recreate(worker, spec, reason) => {
            stop_and_remove(runtime, &worker.name, timeout, stop_grace).await?;
            call(Operation::Create, timeout, runtime.create(spec)).await?;
            call(Operation::Start, timeout, runtime.start(&spec.name)).await?;
            Ok(match reason {
                RecreateReason::SpecChanged => Lifecycle::WorkerRecreated,
                RecreateReason::NotRunning => Lifecycle::WorkerRestarted,
                RecreateReason::Requested => Lifecycle::WorkerRestartedByOperator,
            })
        }
        Action::RemoveData(client) => {
            call(
                Operation::RemoveClientData,
                timeout,
                runtime.remove_client_data(client),
            )
            .await?;
            Ok(Lifecycle::ClientDataRemoved)
        }
        Action::Remove(worker, reason) => {
            stop_and_remove(runtime, &worker.name, timeout, stop_grace).await?;
            Ok(match reason {
                RemoveReason::ClientStale => Lifecycle::WorkerReaped,
                RemoveReason::ClientUnknown | RemoveReason::RoleRemoved => Lifecycle::WorkerRemoved,
            })
        }
    }
}

/// Stops and removes every worker: for `dev`, whose broker dies with it.
pub async fn stop_all(runtime: &dyn Runtime, grace: Duration) {
    let Ok(workers) = runtime.list().await else {
        return;
    };
    let stops = workers.iter().map(|worker| async move {
        let _ = runtime.stop(&worker.name, grace).await;
        let _ = runtime.remove(&worker.name).await;
    });
    futures::future::join_all(stops).await;
}
