//! A client's graph: root-cause candidates and statistics, asked of its graph builder.

use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kg_shared::{ClientId, Role};
use serde::Deserialize;

use crate::runtime::{worker_name, RuntimeError};

use super::errors::{error, ApiError, ClientPath};
use super::ApiState;

#[derive(Deserialize)]
pub(super) struct RcaQuery {
    event_id: String,
    limit: Option<usize>,
}

/// `GET /clients/{id}/rca?event_id=…`: asks the client's graph builder for ranked root-cause
/// candidates and relays its answer.
pub(super) async fn rca(
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
pub(super) async fn graph_stats(
    State(state): State<ApiState>,
    ClientPath(id): ClientPath,
) -> Response {
    graph_query(&state, &id, "/graph/stats", &[]).await
}

pub(super) async fn graph_query(
    state: &ApiState,
    id: &ClientId,
    path: &str,
    params: &[(&str, &str)],
) -> Response {
    if !state.table.contains_key(id) {
        return ApiError::not_registered(id).into_response();
    }
    let name = worker_name(Role::GraphBuilder.as_str(), id);
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
