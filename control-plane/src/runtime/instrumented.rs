//! A [`Runtime`] wrapper that times every call by operation into
//! `cp_runtime_call_duration_seconds`, so every implementation is measured the same way
//! and none of them has to know about metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{ObservedWorker, Runtime, RuntimeError, WorkerSpec};
use crate::metrics::{ControlPlaneMetrics, OperationLabel};

pub struct InstrumentedRuntime {
    inner: Arc<dyn Runtime>,
    metrics: Arc<ControlPlaneMetrics>,
}

impl InstrumentedRuntime {
    pub fn wrap(inner: Arc<dyn Runtime>, metrics: Arc<ControlPlaneMetrics>) -> Arc<dyn Runtime> {
        Arc::new(Self { inner, metrics })
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .runtime_call_duration
            .get_or_create(&OperationLabel {
                operation: operation.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

#[async_trait]
impl Runtime for InstrumentedRuntime {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn list(&self) -> Result<Vec<ObservedWorker>, RuntimeError> {
        self.timed("list", self.inner.list()).await
    }

    async fn create(&self, spec: &WorkerSpec) -> Result<ObservedWorker, RuntimeError> {
        self.timed("create", self.inner.create(spec)).await
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        self.timed("start", self.inner.start(name)).await
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.timed("stop", self.inner.stop(name, grace)).await
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.timed("remove", self.inner.remove(name)).await
    }

    async fn inspect(&self, name: &str) -> Result<ObservedWorker, RuntimeError> {
        self.timed("inspect", self.inner.inspect(name)).await
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<String, RuntimeError> {
        self.timed("logs", self.inner.logs(name, tail)).await
    }

    async fn endpoint(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        self.timed("endpoint", self.inner.endpoint(name)).await
    }

    async fn remove_client_data(&self, client_id: &str) -> Result<(), RuntimeError> {
        self.timed(
            "remove_client_data",
            self.inner.remove_client_data(client_id),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use kg_shared::exposition::ExpositionFormat;

    #[tokio::test]
    async fn every_call_is_timed_by_operation_failures_included() {
        let metrics = Arc::new(ControlPlaneMetrics::new());
        let runtime =
            InstrumentedRuntime::wrap(Arc::new(FakeRuntime::unrecorded()), metrics.clone());
        runtime.list().await.unwrap();
        runtime.list().await.unwrap();
        assert!(runtime.start("kg-nobody").await.is_err());
        let text = metrics.encode(ExpositionFormat::PrometheusText);
        assert!(
            text.contains("cp_runtime_call_duration_seconds_count{operation=\"list\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("cp_runtime_call_duration_seconds_count{operation=\"start\"} 1\n"));
    }
}
