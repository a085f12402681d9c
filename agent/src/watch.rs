//! One kube-rs watcher per watched kind (and namespace): list, then watch from the last
//! resource version; relist on `410 Gone`; back off while the API server is unreachable
//! or a permission is missing. Each watch event goes through its tracker (the decide
//! step) and the records it yields are delivered before the next event is read.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kg_shared::client_id::ClientId;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::metrics::{AgentMetrics, KindLabel, WatchErrorLabel};
use crate::resources::{Kind, Observe};
use crate::sink::{Sink, Topics};
use crate::tracker::{EventTracker, Output, ResourceTracker, Stream};

/// Why a watch failed, as far as an operator needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchFailure {
    /// 403: the service account lacks the permission (RBAC).
    Forbidden,
    /// 410: the resource version expired; the watcher relists.
    Gone,
    /// The API server could not be reached or the connection broke.
    Unreachable,
    /// Anything else the API server answered.
    Other,
}

impl WatchFailure {
    pub fn classify(error: &watcher::Error) -> Self {
        let code = match error {
            watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.code),
            watcher::Error::WatchError(status) => Some(status.code),
            watcher::Error::NoResourceVersion => None,
            _ => return WatchFailure::Unreachable,
        };
        match code {
            Some(403) => WatchFailure::Forbidden,
            Some(410) => WatchFailure::Gone,
            _ => WatchFailure::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            WatchFailure::Forbidden => "forbidden",
            WatchFailure::Gone => "gone",
            WatchFailure::Unreachable => "unreachable",
            WatchFailure::Other => "other",
        }
    }
}

/// A failure is current for this long after it was last seen: a persistent one repeats
/// well within it (the watcher's back-off tops out below it), a cured one ages out even
/// when the kind has no traffic to prove it.
const FAILURE_CURRENT_FOR: Duration = Duration::from_secs(60);

/// What `/health` and the heartbeat say about one watch.
#[derive(Debug, Clone, Default)]
pub struct WatchState {
    pub synced: bool,
    pub failure: Option<(WatchFailure, Instant)>,
}

impl WatchState {
    pub fn current_failure(&self, now: Instant) -> Option<WatchFailure> {
        self.failure
            .filter(|(_, at)| now.duration_since(*at) < FAILURE_CURRENT_FOR)
            .map(|(failure, _)| failure)
    }
}

/// Every watch's state, by name (`pods`, `pods/shop`, `events`).
#[derive(Debug, Default)]
pub struct WatchBoard {
    states: Mutex<BTreeMap<String, WatchState>>,
}

impl WatchBoard {
    pub fn snapshot(&self) -> BTreeMap<String, WatchState> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut WatchState)) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        change(states.entry(name.to_string()).or_default());
    }

    /// True when some watch has a current failure.
    pub fn degraded(&self) -> bool {
        let now = Instant::now();
        self.snapshot()
            .values()
            .any(|state| state.current_failure(now).is_some())
    }
}

/// What every watch shares.
pub struct WatchContext {
    pub client: ClientId,
    pub cluster: String,
    pub sink: Sink,
    pub topics: Topics,
    pub metrics: Arc<AgentMetrics>,
    pub board: Arc<WatchBoard>,
    pub watch_timeout_secs: u32,
}

impl WatchContext {
    fn watcher_config(&self) -> watcher::Config {
        watcher::Config::default().timeout(self.watch_timeout_secs)
    }

    async fn deliver(&self, outputs: Vec<Output>) {
        for output in outputs {
            let topic = match output.stream {
                Stream::Resource => &self.topics.resource,
                Stream::Topology => &self.topics.topology,
                Stream::Events => &self.topics.events,
            };
            // No deadline: the record is retried until Kafka takes it.
            let _ = self
                .sink
                .send(topic, &output.key, output.value.as_deref(), None)
                .await;
        }
    }

    fn on_event(&self, name: &str, kind: &str) {
        self.metrics
            .watch_events
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
        self.board.update(name, |state| {
            if state.failure.take().is_some() {
                tracing::info!(watch = name, "watch recovered");
            }
        });
        self.metrics
            .watch_forbidden
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .set(0);
    }

    fn on_synced(&self, name: &str, kind: &str) {
        self.board.update(name, |state| {
            if !state.synced {
                tracing::info!(watch = name, "initial list complete; watching");
            }
            state.synced = true;
            state.failure = None;
        });
        self.metrics
            .watch_synced
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .set(1);
        self.metrics
            .watch_forbidden
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .set(0);
    }

    fn on_error(&self, name: &str, kind: &str, permission: &str, error: &watcher::Error) {
        let failure = WatchFailure::classify(error);
        self.metrics
            .watch_errors
            .get_or_create(&WatchErrorLabel {
                kind: kind.to_string(),
                reason: failure.as_str().to_string(),
            })
            .inc();
        let mut first = false;
        self.board.update(name, |state| {
            first = state.failure.map(|(previous, _)| previous) != Some(failure);
            state.failure = Some((failure, Instant::now()));
        });
        match failure {
            WatchFailure::Forbidden => {
                self.metrics
                    .watch_forbidden
                    .get_or_create(&KindLabel {
                        kind: kind.to_string(),
                    })
                    .set(1);
                if first {
                    tracing::error!(
                        watch = name,
                        missing_permission = permission,
                        %error,
                        "missing RBAC permission: the agent's service account may not {permission}; \
                         this kind is not streamed until it may (the other kinds keep running)"
                    );
                }
            }
            WatchFailure::Gone => {
                tracing::info!(
                    watch = name,
                    "resource version expired (410 Gone); relisting"
                )
            }
            _ if first => {
                tracing::warn!(watch = name, %error, "watch failed; retrying with back-off")
            }
            _ => tracing::debug!(watch = name, %error, "watch still failing"),
        }
    }
}

/// The permission a watch needs, as an operator would grant it.
fn permission(kind: Kind, namespace: Option<&str>) -> String {
    let (group, resource) = kind.api_resource();
    let group = if group.is_empty() {
        "core".to_string()
    } else {
        group.to_string()
    };
    match namespace {
        Some(ns) => format!("list and watch {resource} ({group} API group) in namespace {ns}"),
        None => format!("list and watch {resource} ({group} API group) cluster-wide"),
    }
}

/// Streams one kind's state and topology until the task is aborted.
pub async fn watch_resources<K>(api: Api<K>, namespace: Option<String>, ctx: Arc<WatchContext>)
where
    K: Observe + Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let kind = K::KIND;
    let (_, resource) = kind.api_resource();
    let name = match &namespace {
        Some(ns) => format!("{resource}/{ns}"),
        None => resource.to_string(),
    };
    let permission = permission(kind, namespace.as_deref());
    let mut tracker = ResourceTracker::new(ctx.client.clone(), ctx.cluster.clone());
    let stream = watcher(api, ctx.watcher_config()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        let outputs = match item {
            Ok(Event::Apply(object)) | Ok(Event::InitApply(object)) => {
                ctx.on_event(&name, kind.as_str());
                object
                    .observe()
                    .map(|observed| tracker.apply(observed, Utc::now()))
                    .unwrap_or_default()
            }
            Ok(Event::Delete(object)) => {
                ctx.on_event(&name, kind.as_str());
                object
                    .uid()
                    .map(|uid| tracker.delete(&uid, Utc::now()))
                    .unwrap_or_default()
            }
            Ok(Event::Init) => {
                tracker.init();
                Vec::new()
            }
            Ok(Event::InitDone) => {
                ctx.on_synced(&name, kind.as_str());
                tracker.init_done(Utc::now())
            }
            Err(error) => {
                ctx.on_error(&name, kind.as_str(), &permission, &error);
                Vec::new()
            }
        };
        ctx.deliver(outputs).await;
        ctx.metrics
            .tracked_objects
            .get_or_create(&KindLabel {
                kind: kind.as_str().to_string(),
            })
            .set(tracker.len() as i64);
    }
}

/// Streams Kubernetes Events to the raw events topic until the task is aborted.
pub async fn watch_events(api: Api<KubeEvent>, namespace: Option<String>, ctx: Arc<WatchContext>) {
    let name = match &namespace {
        Some(ns) => format!("events/{ns}"),
        None => "events".to_string(),
    };
    let permission = match &namespace {
        Some(ns) => format!("list and watch events (core API group) in namespace {ns}"),
        None => "list and watch events (core API group) cluster-wide".to_string(),
    };
    let mut tracker = EventTracker::new(ctx.client.clone());
    let stream = watcher(api, ctx.watcher_config()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        let outputs: Vec<Output> = match item {
            Ok(Event::Apply(event)) | Ok(Event::InitApply(event)) => {
                ctx.on_event(&name, "Event");
                serde_json::to_value(&event)
                    .ok()
                    .and_then(|value| tracker.apply(value))
                    .into_iter()
                    .collect()
            }
            Ok(Event::Delete(event)) => {
                ctx.on_event(&name, "Event");
                if let Some(uid) = event.uid() {
                    tracker.delete(&uid);
                }
                Vec::new()
            }
            Ok(Event::Init) => {
                tracker.init();
                Vec::new()
            }
            Ok(Event::InitDone) => {
                ctx.on_synced(&name, "Event");
                tracker.init_done();
                Vec::new()
            }
            Err(error) => {
                ctx.on_error(&name, "Event", &permission, &error);
                Vec::new()
            }
        };
        ctx.deliver(outputs).await;
        ctx.metrics
            .tracked_objects
            .get_or_create(&KindLabel {
                kind: "Event".to_string(),
            })
            .set(tracker.len() as i64);
    }
}
