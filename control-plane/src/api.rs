//! The HTTP API: health, readiness, metrics, the client table, a worker's logs, and
//! deregistration. [`router`] builds the routes without a socket so tests call it
//! directly.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kg_shared::{ClientId, Role};
use serde::Deserialize;
use serde_json::json;

use crate::controller::{Listing, Status};
use crate::events::EventLog;
use crate::input::{Input, RestartRequest};
use crate::metrics::ControlPlaneMetrics;
use crate::publisher::Publisher;
use crate::runtime::{worker_name, Runtime, RuntimeError};
use crate::supervise::WorkerPhase;
use crate::table::{ClientRecord, ClientTable};
use tokio::sync::mpsc;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub table: ClientTable,
    pub metrics: Arc<ControlPlaneMetrics>,
    pub status: Arc<Status>,
    pub runtime: Arc<dyn Runtime>,
    /// Absent in tests that do not exercise deregistration.
    pub publisher: Option<Arc<Publisher>>,
    /// Bearer token for mutating verbs; when unset they are refused.
    pub api_token: Option<String>,
    /// Lifecycle events, per client.
    pub events: EventLog,
    /// Where operator commands (restarts) go: the controller.
    pub commands: Option<mpsc::Sender<Input>>,
}

/// All routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/clients", get(list_clients))
        .route("/clients/{id}", get(get_client).delete(deregister))
        .route("/clients/{id}/workers/{role}/logs", get(worker_logs))
        .route("/clients/{id}/rca", get(rca))
        .route("/clients/{id}/events", get(client_events))
        .route("/clients/{id}/restart", axum::routing::post(restart))
        .route("/clients/{id}/graph/stats", get(graph_stats))
        .with_state(state)
}

/// The API's one error answer: a status and `{"error": "<message>"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn not_registered(id: &ClientId) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("client {id} is not registered"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<kg_shared::InvalidClientId> for ApiError {
    fn from(invalid: kg_shared::InvalidClientId) -> Self {
        Self::new(StatusCode::BAD_REQUEST, invalid.to_string())
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// The `{id}` of a client route, validated: an invalid id is answered 400 before any
/// handler runs, so none of them can reach the table or the runtime with it.
pub struct ClientPath(pub ClientId);

impl<S: Send + Sync> FromRequestParts<S> for ClientPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text()))?;
        let id = params
            .get("id")
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "no client id in the path"))?;
        Ok(ClientPath(ClientId::parse(id)?))
    }
}

async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(state): State<ApiState>) -> Response {
    let listing = state.status.listing();
    let body = json!({
        "ready": state.status.ready(),
        "registry_replayed": state.status.registry_replayed.load(std::sync::atomic::Ordering::Relaxed),
        "first_listing_done": state.status.first_listing_done.load(std::sync::atomic::Ordering::Relaxed),
        "runtime": state.runtime.kind(),
        "runtime_listable": listing.failing.is_none(),
        "runtime_error": listing.failing.as_ref().map(|failing| format!(
            "the runtime cannot be listed since {}: {}",
            failing.since.to_rfc3339(),
            failing.error
        )),
        "workers_as_of": listing.last_listed_at.map(|at| at.to_rfc3339()),
    });
    let code = if state.status.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// OpenMetrics for scrapers that ask for it, the Prometheus text format otherwise
/// (`kg_shared::exposition` says why).
async fn metrics(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = kg_shared::exposition::ExpositionFormat::negotiate(accept);
    (
        [(CONTENT_TYPE, format.content_type())],
        state.metrics.encode(format),
    )
}

/// The most clients one `GET /clients` returns, unless `limit` asks for fewer.
pub const CLIENTS_PAGE_MAX: usize = 1000;

/// The response header naming the `after` of the next page, present when there is one.
pub const NEXT_PAGE_HEADER: &str = "x-kg-next-after";

#[derive(Debug, Deserialize)]
struct ClientsQuery {
    /// Clients per page, at most [`CLIENTS_PAGE_MAX`].
    limit: Option<usize>,
    /// Only clients whose id sorts after this one (the previous page's last id).
    after: Option<String>,
}

/// `GET /clients[?limit=N][&after=<id>]`: a page of clients, sorted by id. The answer stays
/// a JSON array (what operators' scripts read); a page that is not the last says where the
/// next starts in the `x-kg-next-after` header, so one request never returns thousands of
/// clients' metadata at once.
async fn list_clients(
    State(state): State<ApiState>,
    Query(query): Query<ClientsQuery>,
) -> Response {
    let limit = query
        .limit
        .unwrap_or(CLIENTS_PAGE_MAX)
        .clamp(1, CLIENTS_PAGE_MAX);
    let after = query.after.unwrap_or_default();
    let mut ids: Vec<ClientId> = state
        .table
        .iter()
        .map(|r| r.key().clone())
        .filter(|id| id.as_str() > after.as_str())
        .collect();
    ids.sort();
    let more = ids.len() > limit;
    ids.truncate(limit);
    let listing = state.status.listing();
    let clients: Vec<serde_json::Value> = ids
        .iter()
        .filter_map(|id| {
            state
                .table
                .get(id)
                .map(|r| client_view(r.value(), &listing))
        })
        .collect();
    let mut response = Json(clients).into_response();
    if let (true, Some(last)) = (more, ids.last()) {
        if let Ok(value) = last.as_str().parse() {
            response.headers_mut().insert(NEXT_PAGE_HEADER, value);
        }
    }
    response
}

async fn get_client(State(state): State<ApiState>, ClientPath(id): ClientPath) -> Response {
    match state.table.get(&id) {
        Some(record) => Json(client_view(record.value(), &state.status.listing())).into_response(),
        None => ApiError::not_registered(&id).into_response(),
    }
}

/// A client as the API shows it: its record, and how current its workers are. While the
/// runtime cannot be listed, the workers are marked as last known, with the reason: a
/// worker shown running may have died since, and a new client's workers may not exist.
fn client_view(record: &ClientRecord, listing: &Listing) -> serde_json::Value {
    let mut view = serde_json::to_value(record).unwrap_or_default();
    if let Some(object) = view.as_object_mut() {
        object.insert(
            "workers_as_of".into(),
            json!(listing.last_listed_at.map(|at| at.to_rfc3339())),
        );
        object.insert(
            "workers_last_known".into(),
            json!(listing.failing.is_some()),
        );
        if let Some(failing) = &listing.failing {
            object.insert(
                "workers_note".into(),
                json!(format!(
                    "the runtime cannot be listed since {} ({}); workers are as last seen",
                    failing.since.to_rfc3339(),
                    failing.error
                )),
            );
        }
    }
    view
}

/// None when the request carries the configured bearer token, else the refusal.
fn refuse_unauthorized(state: &ApiState, headers: &HeaderMap, verb: &str) -> Option<Response> {
    let Some(expected) = state.api_token.as_deref().filter(|token| !token.is_empty()) else {
        return Some(error(
            StatusCode::FORBIDDEN,
            format!("{verb} over the API is disabled: set CP_API_TOKEN to enable it"),
        ));
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if presented.is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes())) {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        ))
    }
}

async fn deregister(
    State(state): State<ApiState>,
    client: Result<ClientPath, ApiError>,
    headers: HeaderMap,
) -> Response {
    // The token first: an unauthenticated caller learns nothing about the id.
    if let Some(refusal) = refuse_unauthorized(&state, &headers, "deregistration") {
        return refusal;
    }
    let id = match client {
        Ok(ClientPath(id)) => id,
        Err(invalid) => return invalid.into_response(),
    };
    if !state.table.contains_key(&id) {
        return ApiError::not_registered(&id).into_response();
    }
    let Some(publisher) = &state.publisher else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no kafka producer configured",
        );
    };
    match publisher.tombstone(&id).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "client_id": id, "status": "deregistering" })),
        )
            .into_response(),
        Err(failure) => error(StatusCode::BAD_GATEWAY, failure.to_string()),
    }
}

#[derive(Deserialize)]
struct RestartQuery {
    role: Option<String>,
    #[serde(default)]
    only_failed: bool,
}

/// `POST /clients/{id}/restart[?role=R][&only_failed=true]`: restarts the client's workers
/// (or one role's, or only the failed ones), clearing their backoff and give-up.
async fn restart(
    State(state): State<ApiState>,
    client: Result<ClientPath, ApiError>,
    Query(query): Query<RestartQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refuse_unauthorized(&state, &headers, "restart") {
        return refusal;
    }
    let id = match client {
        Ok(ClientPath(id)) => id,
        Err(invalid) => return invalid.into_response(),
    };
    let Some(record) = state.table.get(&id).map(|r| r.value().clone()) else {
        return ApiError::not_registered(&id).into_response();
    };
    // A name that is no role's names no worker: nothing is restarted, and the answer is
    // what it has always been for it (202, restarting none).
    let role = query.role.as_deref().map(str::parse::<Role>).transpose();
    let workers: Vec<std::sync::Arc<str>> = match &role {
        Ok(role) => record
            .workers
            .iter()
            .filter(|w| role.is_none_or(|role| role.as_str() == &*w.role))
            .filter(|w| !query.only_failed || w.state == WorkerPhase::Failed)
            .map(|w| w.name.clone())
            .collect(),
        Err(_) => Vec::new(),
    };
    let Some(commands) = &state.commands else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no controller to send the restart to",
        );
    };
    let restarted = Json(json!({ "client_id": id, "restarting": workers }));
    let Ok(role) = role else {
        return (StatusCode::ACCEPTED, restarted).into_response();
    };
    let command = Input::Restart(RestartRequest {
        client_id: id.clone(),
        role,
        only_failed: query.only_failed,
    });
    if commands.send(command).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller is stopping",
        );
    }
    (StatusCode::ACCEPTED, restarted).into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
}

/// `GET /clients/{id}/events?limit=N`: the client's last lifecycle events, oldest first.
async fn client_events(
    State(state): State<ApiState>,
    ClientPath(id): ClientPath,
    Query(query): Query<EventsQuery>,
) -> Response {
    let limit = query
        .limit
        .unwrap_or(50)
        .min(crate::events::EVENTS_PER_CLIENT);
    Json(state.events.last(id.as_str(), limit)).into_response()
}

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
}

async fn worker_logs(
    State(state): State<ApiState>,
    ClientPath(id): ClientPath,
    Path((_, role)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
) -> Response {
    if !role.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return error(
            StatusCode::BAD_REQUEST,
            "role names are lowercase words joined by '-'",
        );
    }
    let tail = query.tail.unwrap_or(100).min(10_000);
    match state.runtime.logs(&worker_name(&role, &id), tail).await {
        Ok(text) => ([(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(RuntimeError::NotFound(name)) => {
            error(StatusCode::NOT_FOUND, format!("no worker {name}"))
        }
        Err(failure) => error(StatusCode::BAD_GATEWAY, failure.to_string()),
    }
}

#[derive(Deserialize)]
struct RcaQuery {
    event_id: String,
    limit: Option<usize>,
}

/// `GET /clients/{id}/rca?event_id=…`: asks the client's graph builder for ranked root-cause
/// candidates and relays its answer.
async fn rca(
    State(state): State<ApiState>,
    ClientPath(id): ClientPath,
    Query(query): Query<RcaQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(10).clamp(1, 100).to_string();
    graph_query(
        &state,
        &id,
        "/graph/rca",
        &[
            ("event_id", query.event_id.as_str()),
            ("limit", limit.as_str()),
        ],
    )
    .await
}

/// `GET /clients/{id}/graph/stats`: the client's graph statistics.
async fn graph_stats(State(state): State<ApiState>, ClientPath(id): ClientPath) -> Response {
    graph_query(&state, &id, "/graph/stats", &[]).await
}

async fn graph_query(
    state: &ApiState,
    id: &ClientId,
    path: &str,
    params: &[(&str, &str)],
) -> Response {
    if !state.table.contains_key(id) {
        return ApiError::not_registered(id).into_response();
    }
    let name = worker_name("graph-builder", id);
    let endpoint = match state.runtime.endpoint(&name).await {
        Ok(Some(endpoint)) => endpoint,
        Ok(None) | Err(RuntimeError::NotFound(_)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{name} is not running"),
            )
        }
        Err(failure) => return error(StatusCode::BAD_GATEWAY, failure.to_string()),
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build();
    let Ok(client) = client else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to build an http client",
        );
    };
    match client
        .get(format!("http://{endpoint}{path}"))
        .query(params)
        .send()
        .await
    {
        Ok(response) => {
            let status =
                StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match response.bytes().await {
                Ok(body) => (status, [(CONTENT_TYPE, "application/json")], body).into_response(),
                Err(failure) => error(StatusCode::BAD_GATEWAY, failure.to_string()),
            }
        }
        Err(failure) => error(
            StatusCode::BAD_GATEWAY,
            format!("{name} did not answer: {failure}"),
        ),
    }
}

/// Compares without an early exit, so response timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use axum::body::Body;
    use axum::http::Request;
    use dashmap::DashMap;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// An active client's record with `workers`.
    fn active_record(client_id: ClientId, workers: Vec<crate::table::WorkerView>) -> ClientRecord {
        ClientRecord {
            client_id,
            state: crate::table::ClientState::Active,
            cluster_name: None,
            registered_at: chrono::Utc::now(),
            last_heartbeat: None,
            registration: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            registrations_seen: 1,
            workers,
        }
    }

    fn state(token: Option<&str>) -> ApiState {
        ApiState {
            table: Arc::new(DashMap::new()),
            metrics: Arc::new(ControlPlaneMetrics::new()),
            status: Arc::new(Status::default()),
            runtime: Arc::new(FakeRuntime::new()),
            publisher: None,
            api_token: token.map(str::to_string),
            events: EventLog::default(),
            commands: None,
        }
    }

    async fn send(
        state: ApiState,
        method: &str,
        uri: &str,
        auth: Option<&str>,
    ) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(auth) = auth {
            request = request.header(AUTHORIZATION, auth);
        }
        let response = router(state)
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn ready_is_unavailable_until_the_registry_is_replayed_and_the_runtime_listed() {
        let state = state(None);
        assert_eq!(
            send(state.clone(), "GET", "/ready", None).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state
            .status
            .registry_replayed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let listed_at = chrono::DateTime::from_timestamp(1_760_000_000, 0).unwrap();
        state.status.listed(listed_at);
        assert_eq!(
            send(state.clone(), "GET", "/ready", None).await.0,
            StatusCode::OK
        );

        // The runtime stops answering: not ready, and says why and since when.
        let later = listed_at + chrono::Duration::seconds(5);
        state
            .status
            .listing_failed(later, "cannot read /data/workers".into());
        state.status.listing_failed(
            later + chrono::Duration::seconds(5),
            "cannot read /data/workers".into(),
        );
        let (code, body) = send(state.clone(), "GET", "/ready", None).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["runtime_listable"], false);
        assert!(body["runtime_error"]
            .as_str()
            .unwrap()
            .contains(&later.to_rfc3339()));
        assert_eq!(body["workers_as_of"], listed_at.to_rfc3339());

        // Listed again: ready.
        state.status.listed(later + chrono::Duration::seconds(20));
        assert_eq!(send(state, "GET", "/ready", None).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn deregistration_is_refused_when_no_token_is_configured() {
        let (status, body) = send(state(None), "DELETE", "/clients/af-9", Some("Bearer x")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("CP_API_TOKEN"));
    }

    #[tokio::test]
    async fn deregistration_requires_the_right_bearer_token() {
        assert_eq!(
            send(state(Some("s3cret")), "DELETE", "/clients/af-9", None)
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            send(
                state(Some("s3cret")),
                "DELETE",
                "/clients/af-9",
                Some("Bearer wrong")
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            send(
                state(Some("s3cret")),
                "DELETE",
                "/clients/af-9",
                Some("Bearer s3cret")
            )
            .await
            .0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn the_token_is_checked_before_the_client_id() {
        for (method, uri) in [
            ("DELETE", "/clients/Bad_Id"),
            ("POST", "/clients/Bad_Id/restart"),
        ] {
            let (status, _) = send(state(Some("test-token")), method, uri, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        }
    }

    #[tokio::test]
    async fn an_invalid_client_id_is_a_bad_request_on_every_client_route() {
        // The mutating verbs authorize first: with the token, the id is what is refused.
        let routes = [
            ("GET", "/clients/Bad_Id"),
            ("GET", "/clients/Bad_Id/events"),
            ("GET", "/clients/Bad_Id/workers/graph-builder/logs"),
            ("GET", "/clients/Bad_Id/rca?event_id=x"),
            ("GET", "/clients/Bad_Id/graph/stats"),
            ("DELETE", "/clients/Bad_Id"),
            ("POST", "/clients/Bad_Id/restart"),
        ];
        for (method, uri) in routes {
            let (status, body) = send(
                state(Some("test-token")),
                method,
                uri,
                Some("Bearer test-token"),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {body}");
            let error: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(
                error["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("Bad_Id")),
                "{method} {uri}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn clients_come_in_pages_that_say_where_the_next_starts() {
        let state = state(None);
        for n in 0..5 {
            let id = ClientId::parse(&format!("client-{n}")).unwrap();
            state
                .table
                .insert(id.clone(), active_record(id, Vec::new()));
        }
        let page = |uri: &str| {
            let state = state.clone();
            let uri = uri.to_string();
            async move {
                let response = router(state)
                    .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                let next = response
                    .headers()
                    .get(NEXT_PAGE_HEADER)
                    .map(|v| v.to_str().unwrap().to_string());
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let ids: Vec<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&body)
                    .unwrap()
                    .iter()
                    .map(|c| c["client_id"].as_str().unwrap().to_string())
                    .collect();
                (ids, next)
            }
        };
        let (ids, next) = page("/clients?limit=2").await;
        assert_eq!(ids, ["client-0", "client-1"]);
        assert_eq!(next.as_deref(), Some("client-1"));
        let (ids, next) = page("/clients?limit=2&after=client-3").await;
        assert_eq!(ids, ["client-4"]);
        assert_eq!(next, None);
        let (ids, next) = page("/clients").await;
        assert_eq!(ids.len(), 5);
        assert_eq!(next, None);
    }

    #[tokio::test]
    async fn a_restart_names_a_role_or_restarts_nothing() {
        let (commands, mut sent) = mpsc::channel(4);
        let mut state = state(Some("test-token"));
        state.commands = Some(commands);
        let id = ClientId::parse("af-9").unwrap();
        let worker = |role: &str| crate::table::WorkerView {
            role: role.into(),
            name: format!("kg-{role}-af-9").into(),
            id: role.into(),
            state: WorkerPhase::Running,
            exit_code: None,
            restart_policy: crate::supervise::RestartPolicy::Always,
            restart_count: 0,
            last_exit_reason: None,
            next_retry_at: None,
            failed_reason: None,
            last_lines: None,
        };
        state.table.insert(
            id.clone(),
            active_record(
                id.clone(),
                vec![worker("event-normalizer"), worker("log-normalizer")],
            ),
        );
        let restart = |query: &'static str| {
            let state = state.clone();
            async move {
                let uri = format!("/clients/af-9/restart{query}");
                send(state, "POST", &uri, Some("Bearer test-token")).await
            }
        };

        let (status, body) = restart("?role=log-normalizer").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(
            body,
            r#"{"client_id":"af-9","restarting":["kg-log-normalizer-af-9"]}"#
        );
        let Some(Input::Restart(request)) = sent.try_recv().ok() else {
            panic!("no restart sent");
        };
        assert_eq!(
            request,
            RestartRequest {
                client_id: id.clone(),
                role: Some(kg_shared::Role::LogNormalizer),
                only_failed: false,
            }
        );

        // No such role: no worker has it, so nothing is restarted.
        let (status, body) = restart("?role=miner").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body, r#"{"client_id":"af-9","restarting":[]}"#);
        assert!(sent.try_recv().is_err());

        let (status, body) = restart("").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let Some(Input::Restart(request)) = sent.try_recv().ok() else {
            panic!("no restart sent");
        };
        assert_eq!(request.role, None);
    }

    #[tokio::test]
    async fn clients_is_a_json_array() {
        let (status, body) = send(state(None), "GET", "/clients", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "[]");
    }
}
