//! A scripted fake Kubernetes API server that speaks the real list/watch protocol over
//! HTTP, for testing the agent where no API server can run (the way kube-rs tests its own
//! runtime against recorded API exchanges).
//!
//! What it speaks: `GET` lists (`{"kind":"…List","metadata":{"resourceVersion"},"items"}`)
//! at the core (`/api/v1/…`) and group (`/apis/<group>/<version>/…`) paths, cluster-wide
//! and per namespace; watches (`?watch=true&resourceVersion=N`) as chunked JSON lines
//! (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` when `allowWatchBookmarks`, and `ERROR` with
//! a `410 Expired` Status when N is older than the compacted history), ended after
//! `timeoutSeconds`; `403 Forbidden` Status answers for kinds the test forbids. One global
//! resource version counter, as etcd's. Every request is logged for assertions.
//!
//! What the test scripts: objects applied and deleted, kinds forbidden and allowed,
//! history compacted (the next watch from an older version gets 410), every open watch
//! ended with a 410 at once, and outages: [`FakeKube::stop`] drops the listener and every
//! open connection; [`FakeKube::start`] serves the same state on the same port again.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// The resources the fake knows: (group, version, plural, kind).
const RESOURCES: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "pods", "Pod"),
    ("", "v1", "nodes", "Node"),
    ("", "v1", "services", "Service"),
    ("", "v1", "endpoints", "Endpoints"),
    ("", "v1", "events", "Event"),
    ("apps", "v1", "deployments", "Deployment"),
    ("apps", "v1", "replicasets", "ReplicaSet"),
    ("apps", "v1", "statefulsets", "StatefulSet"),
    ("apps", "v1", "daemonsets", "DaemonSet"),
    ("batch", "v1", "jobs", "Job"),
];

fn resource_of_kind(kind: &str) -> Option<(&'static str, &'static str, &'static str)> {
    RESOURCES
        .iter()
        .find(|(_, _, _, k)| *k == kind)
        .map(|(group, version, plural, _)| (*group, *version, *plural))
}

fn kind_of_plural(plural: &str) -> Option<&'static str> {
    RESOURCES
        .iter()
        .find(|(_, _, p, _)| *p == plural)
        .map(|(_, _, _, kind)| *kind)
}

/// One change, as watches deliver it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    plural: String,
    namespace: Option<String>,
    event_type: &'static str,
    object: Value,
}

/// A message to every open watch.
#[derive(Clone, Debug)]
enum Notice {
    Change(Change),
    /// End every open watch with `410 Gone`.
    Expire,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub status: u16,
}

impl LoggedRequest {
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }
}

#[derive(Default)]
struct KubeState {
    rv: u64,
    /// (plural, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    history: Vec<Change>,
    /// Watches from versions below this get 410.
    compacted_below: u64,
    forbidden: HashSet<String>,
    requests: Vec<LoggedRequest>,
    next_uid: u64,
}

struct Shared {
    state: Mutex<KubeState>,
    notices: broadcast::Sender<Notice>,
    bookmark_every: Duration,
}

/// The fake API server. Its own thread runs a tokio runtime, so blocking tests can use it.
pub struct FakeKube {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl FakeKube {
    /// Starts on a free loopback port.
    pub fn start_new() -> Result<Self> {
        let (notices, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            state: Mutex::new(KubeState {
                rv: 100,
                ..KubeState::default()
            }),
            notices,
            bookmark_every: Duration::from_millis(500),
        });
        let port = crate::free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n    namespace: default\n\
                 current-context: fake\nusers:\n- name: agent\n  user:\n    token: fake-service-account-token\n"
            ),
        )?;
        let mut fake = Self {
            shared,
            addr,
            runtime: None,
            _dir: dir,
            kubeconfig,
        };
        fake.start()?;
        Ok(fake)
    }

    /// A kubeconfig pointing at this server (`KUBECONFIG` for the agent).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves (again) on the same port.
    pub fn start(&mut self) -> Result<()> {
        if self.runtime.is_some() {
            return Ok(());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let addr = self.addr;
        // The previous server's socket may take a moment to go after an outage.
        let listener = crate::poll(
            "the fake API server's port",
            Duration::from_secs(10),
            || {
                runtime
                    .block_on(async {
                        let socket = tokio::net::TcpSocket::new_v4()?;
                        socket.set_reuseaddr(true)?;
                        socket.bind(addr)?;
                        socket.listen(128)
                    })
                    .ok()
            },
        )?;
        let router = Router::new()
            .fallback(handle)
            .with_state(self.shared.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        self.runtime = Some(runtime);
        Ok(())
    }

    /// An outage: the listener and every open connection go at once.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Drops every task, the listener and the open connections with them.
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut KubeState) -> T) -> T {
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.with_state(|s| s.rv)
    }

    /// Creates or replaces an object (by kind, namespace and name); gives it a uid when it
    /// has none, a new resource version, and a creation timestamp. Returns the stored object.
    pub fn apply(&self, mut object: Value) -> Value {
        let kind = object["kind"]
            .as_str()
            .expect("object has a kind")
            .to_string();
        let (group, version, plural) = resource_of_kind(&kind).expect("a kind the fake knows");
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        object["apiVersion"] = json!(api_version);
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_string);
        let name = object["metadata"]["name"]
            .as_str()
            .expect("object has a name")
            .to_string();
        let change = self.with_state(|state| {
            state.rv += 1;
            let rv = state.rv;
            let key = (
                plural.to_string(),
                namespace.clone().unwrap_or_default(),
                name,
            );
            let existing_uid = state
                .objects
                .get(&key)
                .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_string));
            let event_type = if state.objects.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            if object["metadata"]["uid"].as_str().is_none() {
                let uid = existing_uid.unwrap_or_else(|| {
                    state.next_uid += 1;
                    format!("uid-{}-{}", kind.to_ascii_lowercase(), state.next_uid)
                });
                object["metadata"]["uid"] = json!(uid);
            }
            if object["metadata"]["creationTimestamp"].is_null() {
                object["metadata"]["creationTimestamp"] =
                    json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            }
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            state.objects.insert(key, object.clone());
            let change = Change {
                rv,
                plural: plural.to_string(),
                namespace: namespace.clone(),
                event_type,
                object: object.clone(),
            };
            state.history.push(change.clone());
            change
        });
        let _ = self.shared.notices.send(Notice::Change(change));
        object
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let (_, _, plural) = resource_of_kind(kind).expect("a kind the fake knows");
        let change = self.with_state(|state| {
            let key = (
                plural.to_string(),
                namespace.unwrap_or_default().to_string(),
                name.to_string(),
            );
            let mut object = state.objects.remove(&key)?;
            state.rv += 1;
            object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            let change = Change {
                rv: state.rv,
                plural: plural.to_string(),
                namespace: namespace.map(str::to_string),
                event_type: "DELETED",
                object,
            };
            state.history.push(change.clone());
            Some(change)
        });
        match change {
            Some(change) => {
                let _ = self.shared.notices.send(Notice::Change(change));
                true
            }
            None => false,
        }
    }

    /// Answers 403 to every list and watch of `plural` (e.g. `pods`).
    pub fn forbid(&self, plural: &str) {
        self.with_state(|s| s.forbidden.insert(plural.to_string()));
    }

    pub fn allow(&self, plural: &str) {
        self.with_state(|s| s.forbidden.remove(plural));
    }

    /// Forgets the history: a watch from any version before now gets `410 Gone`.
    pub fn compact(&self) {
        self.with_state(|s| {
            s.compacted_below = s.rv + 1;
            s.history.clear();
        });
    }

    /// Ends every open watch with `410 Gone` (after compacting, so that resuming fails
    /// too and the client must relist).
    pub fn expire_watches(&self) {
        self.compact();
        let _ = self.shared.notices.send(Notice::Expire);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.with_state(|s| s.requests.clone())
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a request points.
struct Target {
    plural: String,
    kind: &'static str,
    api_version: String,
    namespace: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural),
        _ => return None,
    };
    let kind = kind_of_plural(plural)?;
    Some(Target {
        plural: plural.to_string(),
        kind,
        api_version,
        namespace,
    })
}

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn json_response(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn matches(change: &Change, target: &Target) -> bool {
    change.plural == target.plural
        && (target.namespace.is_none() || change.namespace == target.namespace)
}

#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_string(), v.replace("%2C", ",")))
        })
        .collect();
    let target = parse_path(&path);
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let code = match &target {
        None => 404,
        Some(t) if state.forbidden.contains(&t.plural) => 403,
        Some(_) => 200,
    };
    state.requests.push(LoggedRequest {
        path: path.clone(),
        query: query.clone(),
        status: code,
    });
    let Some(target) = target else {
        return json_response(404, &status(404, "NotFound", format!("no route {path}")));
    };
    if code == 403 {
        let scope = match &target.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        let group = target
            .api_version
            .split_once('/')
            .map(|(g, _)| g)
            .unwrap_or("");
        return json_response(
            403,
            &status(
                403,
                "Forbidden",
                format!(
                    "{plural} is forbidden: User \"system:serviceaccount:observability:kg-rca-agent\" \
                     cannot list resource \"{plural}\" in API group \"{group}\" {scope}",
                    plural = target.plural
                ),
            ),
        );
    }
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if !watch {
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((plural, ns, _), _)| {
                *plural == target.plural && target.namespace.as_ref().is_none_or(|want| want == ns)
            })
            .map(|(_, object)| object.clone())
            .collect();
        let list = json!({
            "kind": format!("{}List", target.kind),
            "apiVersion": target.api_version,
            "metadata": {"resourceVersion": state.rv.to_string()},
            "items": items,
        });
        return json_response(200, &list);
    }

    // A watch.
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(state.rv);
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(290),
    );
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(1024);
    fn line(event_type: &str, object: &Value) -> String {
        format!("{}\n", json!({"type": event_type, "object": object}))
    }
    let expired = move |rv: u64| {
        line(
            "ERROR",
            &status(
                410,
                "Expired",
                format!("too old resource version: {from} ({rv})"),
            ),
        )
    };
    if from < state.compacted_below {
        let _ = tx.try_send(expired(state.rv));
        drop(tx);
    } else {
        let mut notices = shared.notices.subscribe();
        let mut last = from;
        for change in state
            .history
            .iter()
            .filter(|c| c.rv > from && matches(c, &target))
        {
            let _ = tx.try_send(line(change.event_type, &change.object));
            last = change.rv;
        }
        let bookmark_every = shared.bookmark_every;
        let kind = target.kind;
        let api_version = target.api_version.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut ticker = tokio::time::interval(bookmark_every);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = ticker.tick(), if bookmarks => {
                        let rv = shared.state.lock().unwrap_or_else(|p| p.into_inner()).rv;
                        let bookmark = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}});
                        if tx.send(line("BOOKMARK", &bookmark)).await.is_err() { break; }
                    }
                    notice = notices.recv() => match notice {
                        Ok(Notice::Change(change)) if change.rv > last && matches(&change, &target) => {
                            last = change.rv;
                            if tx.send(line(change.event_type, &change.object)).await.is_err() { break; }
                        }
                        Ok(Notice::Change(_)) => {}
                        Ok(Notice::Expire) | Err(_) => {
                            let rv = shared.state.lock().unwrap_or_else(|p| p.into_inner()).rv;
                            let _ = tx.send(expired(rv)).await;
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(state);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

/// Waits until the fake has logged a request matching `predicate`.
pub fn wait_for_request(
    fake: &FakeKube,
    what: &str,
    deadline: Duration,
    predicate: impl Fn(&LoggedRequest) -> bool,
) -> Result<LoggedRequest> {
    crate::poll(what, deadline, || {
        fake.requests().into_iter().find(|r| predicate(r))
    })
    .with_context(|| format!("{} requests logged", fake.requests().len()))
}
