//! The client table: listing and reading clients, their events and workers' logs, and
//! the mutating verbs (deregistration, restarts) behind the bearer token.

use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kg_shared::{ClientId, Role};
use serde::Deserialize;
use serde_json::json;

use crate::input::{Input, RestartRequest};
use crate::runtime::{worker_name, RuntimeError};
use crate::supervise::WorkerPhase;

use super::auth::refuse_unauthorized;
use super::errors::{error, ApiError, ClientPath};
use super::views::client_view;
use super::ApiState;

/// The most clients one `GET /clients` returns, unless `limit` asks for fewer.
pub const CLIENTS_PAGE_MAX: usize = 1000;

/// The response header naming the `after` of the next page, present when there is one.
pub const NEXT_PAGE_HEADER: &str = "x-kg-next-after";

#[derive(Debug, Deserialize)]
pub(super) struct ClientsQuery {
    /// Clients per page, at most [`CLIENTS_PAGE_MAX`].
    limit: Option<usize>,
    /// Only clients whose id sorts after this one (the previous page's last id).
    after: Option<String>,
}

/// `GET /clients[?limit=N][&after=<id>]`: a page of clients, sorted by id. The answer stays
/// a JSON array (what operators' scripts read); a page that is not the last says where the
/// next starts in the `x-kg-next-after` header, so one request never returns thousands of
/// clients' metadata at once.
pub(super) async fn list_clients(
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
    let ownership = state.status.ownership();
    let clients: Vec<serde_json::Value> = ids
        .iter()
        .filter_map(|id| {
            state
                .table
                .get(id)
                .map(|r| client_view(r.value(), &listing, &ownership))
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

pub(super) async fn get_client(
    State(state): State<ApiState>,
    ClientPath(id): ClientPath,
) -> Response {
    match state.table.get(&id) {
        Some(record) => {
            let mut view = client_view(
                record.value(),
                &state.status.listing(),
                &state.status.ownership(),
            );
            if view["acted_on_here"] == false {
                view["owner"] = json!(owner_of(&state, &id));
            }
            Json(view).into_response()
        }
        None => ApiError::not_registered(&id).into_response(),
    }
}

pub(super) async fn deregister(
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
pub(super) struct RestartQuery {
    role: Option<String>,
    #[serde(default)]
    only_failed: bool,
}

/// `POST /clients/{id}/restart[?role=R][&only_failed=true]`: restarts the client's workers
/// (or one role's, or only the failed ones), clearing their backoff and give-up.
pub(super) async fn restart(
    State(state): State<ApiState>,
    uri: axum::http::Uri,
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
    if !state.status.ownership().owns(id.as_str()) {
        // Restarts are the owner's (its supervision, its backoff): sent on to it.
        return to_the_owner(&state, &id, &uri);
    }
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
pub(super) struct EventsQuery {
    limit: Option<usize>,
}

/// `GET /clients/{id}/events?limit=N`: the client's last lifecycle events, oldest first.
pub(super) async fn client_events(
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
pub(super) struct LogsQuery {
    tail: Option<usize>,
    /// For role `pipeline`: which of the client's pipelines.
    pipeline: Option<String>,
}

pub(super) async fn worker_logs(
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
    // A client has one worker of each role, but one per pipeline: `?pipeline=` says which.
    let name = match (role.as_str(), query.pipeline.as_deref()) {
        ("pipeline", Some(pipeline)) if kg_shared::pipeline_template::is_name(pipeline) => {
            kg_shared::pipeline_template::worker_name(pipeline, &id)
        }
        ("pipeline", _) => return error(
            StatusCode::BAD_REQUEST,
            "role pipeline needs ?pipeline=<name> (lowercase letters, digits and '-', at most 20)",
        ),
        (_, Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "?pipeline= is for role pipeline only",
            )
        }
        (role, None) => worker_name(role, &id),
    };
    match state.runtime.logs(&name, tail).await {
        Ok(text) => ([(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(RuntimeError::NotFound(name)) => {
            error(StatusCode::NOT_FOUND, format!("no worker {name}"))
        }
        Err(failure) => error(StatusCode::BAD_GATEWAY, failure.to_string()),
    }
}

/// A request only `id`'s owner can carry out, made to another control plane: a `307` to
/// the same path on the owner (method and body kept), with the owner in the body too;
/// `503` while no control plane claims the client (a handover under way).
fn to_the_owner(state: &ApiState, id: &ClientId, uri: &axum::http::Uri) -> Response {
    let Some(owner) = owner_of(state, id) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{id} is acted on by another control plane, and none claims it right now (a handover under way?); try again in a few seconds"),
        );
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let location = format!("{owner}{path}");
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(axum::http::header::LOCATION, location.clone())],
        Json(json!({
            "error": format!("{id} is acted on by the control plane at {owner}; repeat the request there"),
            "owner": owner,
            "location": location,
        })),
    )
        .into_response()
}

/// The API address of the control plane that acts on `id` now, by the others'
/// announcements; None without several control planes, or while none claims it.
fn owner_of(state: &ApiState, id: &ClientId) -> Option<String> {
    state
        .members
        .as_ref()
        .and_then(|members| members.owner_of(id.as_str(), chrono::Utc::now()))
}
