//! An in-memory runtime for tests: it keeps workers in a map, records every call, and
//! injects failures, delays and crashes on command.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::{ObservedWorker, Runtime, RuntimeError, RuntimeState, WorkerSpec};

const MAX_RECORDED_CALLS: usize = 20_000;

/// One recorded call: operation and worker name (`*` for list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub operation: &'static str,
    pub name: String,
}

/// What the fake keeps of a worker: its labels, as a real runtime would (not the whole
/// spec, so a benchmark on the fake measures the control plane, not the fake).
#[derive(Debug, Clone)]
struct FakeWorker {
    name: Arc<str>,
    id: Arc<str>,
    client_id: Arc<str>,
    role: Arc<str>,
    spec_hash: Arc<str>,
}

impl FakeWorker {
    fn new(spec: &WorkerSpec, id: u64) -> Self {
        Self {
            name: spec.name.clone(),
            id: format!("fake-{id}").into(),
            client_id: spec.client_id.as_str().into(),
            role: spec.role.clone(),
            spec_hash: spec.spec_hash.clone(),
        }
    }
}

#[derive(Default)]
struct FakeState {
    workers: BTreeMap<Arc<str>, (FakeWorker, RuntimeState)>,
    calls: Vec<Call>,
    failures: HashMap<(&'static str, String), RuntimeError>,
    endpoints: HashMap<String, String>,
    /// Off for `CP_RUNTIME=fake` (benchmarks): a call log that grows with every probe would
    /// be measured as the control plane's memory.
    record_calls: bool,
    delays: HashMap<(&'static str, String), Duration>,
    next_id: u64,
    /// Calls of each operation inside their injected delay now, and the most ever seen.
    in_progress: HashMap<&'static str, (usize, usize)>,
}

/// The recording fake.
#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<FakeState>,
}

impl FakeRuntime {
    /// A fake that records every call, for tests.
    pub fn new() -> Self {
        let runtime = Self::default();
        runtime.lock().record_calls = true;
        runtime
    }

    /// A fake that records nothing: the stand-in runtime of `CP_RUNTIME=fake`.
    pub fn unrecorded() -> Self {
        Self::default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Calls of one operation, by worker name.
    pub fn calls_of(&self, operation: &str) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter(|call| call.operation == operation)
            .map(|call| call.name.clone())
            .collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Makes the next `operation` on `name` (`*` for any name) fail with `error`.
    pub fn fail_next(&self, operation: &'static str, name: &str, error: RuntimeError) {
        self.lock()
            .failures
            .insert((operation, name.to_string()), error);
    }

    /// Makes every `operation` on `name` (`*` for any) take `delay` first.
    pub fn delay(&self, operation: &'static str, name: &str, delay: Duration) {
        self.lock()
            .delays
            .insert((operation, name.to_string()), delay);
    }

    /// The most calls of `operation` that were ever inside their injected delay at once.
    pub fn max_concurrent(&self, operation: &str) -> usize {
        self.lock()
            .in_progress
            .get(operation)
            .map_or(0, |(_, most)| *most)
    }

    /// Gives a worker an HTTP endpoint (for health probes).
    pub fn set_endpoint(&self, name: &str, endpoint: &str) {
        self.lock()
            .endpoints
            .insert(name.to_string(), endpoint.to_string());
    }

    /// Simulates a worker ending on its own.
    pub fn crash(&self, name: &str, exit_code: i32) {
        if let Some(entry) = self.lock().workers.get_mut(name) {
            entry.1 = RuntimeState::Exited {
                exit_code: Some(exit_code),
                exited_at: Utc::now(),
                oom_killed: false,
            };
        }
    }

    /// Adds a worker as if a previous control plane had started it.
    pub fn insert_running(&self, spec: WorkerSpec) {
        let mut state = self.lock();
        state.next_id += 1;
        let worker = FakeWorker::new(&spec, state.next_id);
        state.workers.insert(
            spec.name.clone(),
            (
                worker,
                RuntimeState::Running {
                    started_at: Utc::now(),
                },
            ),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        // A panicking test thread must not hide the state from the others.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn enter(&self, operation: &'static str, name: &str) -> Result<(), RuntimeError> {
        let (delay, failure) = {
            let mut state = self.lock();
            if state.record_calls {
                // Bounded, so a long test does not grow without limit.
                if state.calls.len() >= MAX_RECORDED_CALLS {
                    state.calls.drain(..MAX_RECORDED_CALLS / 2);
                }
                state.calls.push(Call {
                    operation,
                    name: name.to_string(),
                });
            }
            let delay = state
                .delays
                .get(&(operation, name.to_string()))
                .or_else(|| state.delays.get(&(operation, "*".to_string())))
                .copied();
            let failure = state
                .failures
                .remove(&(operation, name.to_string()))
                .or_else(|| state.failures.remove(&(operation, "*".to_string())));
            (delay, failure)
        };
        if let Some(delay) = delay {
            {
                let mut state = self.lock();
                let (now, most) = state.in_progress.entry(operation).or_default();
                *now += 1;
                *most = (*most).max(*now);
            }
            tokio::time::sleep(delay).await;
            if let Some((now, _)) = self.lock().in_progress.get_mut(operation) {
                *now -= 1;
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn observed(worker: &FakeWorker, state: &RuntimeState) -> ObservedWorker {
    ObservedWorker {
        name: worker.name.clone(),
        id: worker.id.clone(),
        client_id: worker.client_id.clone(),
        role: worker.role.clone(),
        spec_hash: worker.spec_hash.clone(),
        state: state.clone(),
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn list(&self) -> Result<Vec<ObservedWorker>, RuntimeError> {
        self.enter("list", "*").await?;
        Ok(self
            .lock()
            .workers
            .values()
            .map(|(worker, state)| observed(worker, state))
            .collect())
    }

    async fn create(&self, spec: &WorkerSpec) -> Result<ObservedWorker, RuntimeError> {
        self.enter("create", &spec.name).await?;
        let mut state = self.lock();
        if state.workers.contains_key(&spec.name) {
            return Err(RuntimeError::Conflict(spec.name.to_string()));
        }
        state.next_id += 1;
        let worker = FakeWorker::new(spec, state.next_id);
        let created = observed(&worker, &RuntimeState::Created);
        state
            .workers
            .insert(spec.name.clone(), (worker, RuntimeState::Created));
        Ok(created)
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        self.enter("start", name).await?;
        let mut state = self.lock();
        let entry = state
            .workers
            .get_mut(name)
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))?;
        if !matches!(entry.1, RuntimeState::Running { .. }) {
            entry.1 = RuntimeState::Running {
                started_at: Utc::now(),
            };
        }
        Ok(())
    }

    async fn stop(&self, name: &str, _grace: Duration) -> Result<(), RuntimeError> {
        self.enter("stop", name).await?;
        let mut state = self.lock();
        let entry = state
            .workers
            .get_mut(name)
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))?;
        if matches!(entry.1, RuntimeState::Running { .. }) {
            entry.1 = RuntimeState::Exited {
                exit_code: Some(0),
                exited_at: Utc::now(),
                oom_killed: false,
            };
        }
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.enter("remove", name).await?;
        let mut state = self.lock();
        match state.workers.get(name) {
            None => Err(RuntimeError::NotFound(name.to_string())),
            Some((_, RuntimeState::Running { .. })) => {
                Err(RuntimeError::Conflict(name.to_string()))
            }
            Some(_) => {
                state.workers.remove(name);
                Ok(())
            }
        }
    }

    async fn inspect(&self, name: &str) -> Result<ObservedWorker, RuntimeError> {
        self.enter("inspect", name).await?;
        self.lock()
            .workers
            .get(name)
            .map(|(worker, state)| observed(worker, state))
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<String, RuntimeError> {
        self.enter("logs", name).await?;
        let state = self.lock();
        let (spec, _) = state
            .workers
            .get(name)
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))?;
        let line = format!("fake worker {} for client {}\n", spec.role, spec.client_id);
        Ok(line.repeat(tail.min(1)))
    }

    async fn endpoint(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        self.enter("endpoint", name).await?;
        Ok(self.lock().endpoints.get(name).cloned())
    }

    async fn remove_client_data(&self, client_id: &str) -> Result<(), RuntimeError> {
        self.enter("remove_client_data", client_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_runtime_passes_the_runtime_contract() {
        let runtime = FakeRuntime::new();
        crate::runtime::contract::run_contract(
            &runtime,
            "contract-fake",
            "img",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn injected_failures_hit_once() {
        let runtime = FakeRuntime::new();
        runtime.fail_next("list", "*", RuntimeError::Unavailable("down".into()));
        assert!(runtime.list().await.is_err());
        assert!(runtime.list().await.is_ok());
    }
}
