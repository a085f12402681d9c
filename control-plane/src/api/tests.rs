//! The API over the fake runtime, called through the router without a socket.

use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use kg_shared::ClientId;

use super::*;
use crate::input::RestartRequest;
use crate::runtime::fake::FakeRuntime;
use crate::supervise::WorkerPhase;
use crate::table::ClientRecord;
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
        members: None,
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

#[tokio::test]
async fn a_pipeline_workers_logs_are_found_by_its_pipeline_name() {
    let state = state(None);
    let client = ClientId::parse("metro-la").unwrap();
    let parts = crate::runtime::SharedRoleParts {
        role: "pipeline".into(),
        instance: Some("traffic-flatten".into()),
        image: "img".into(),
        args: Vec::<String>::new().into(),
        env: Default::default(),
        memory_limit_mb: None,
        cpu_limit: None,
        placement: std::sync::Arc::from([]),
    };
    let spec = crate::runtime::WorkerSpec::new(client.clone(), &parts);
    assert_eq!(&*spec.name, "kg-pipeline-traffic-flatten.metro-la");
    state.runtime.create(&spec).await.unwrap();
    let get = |uri: &'static str| send(state.clone(), "GET", uri, None);
    let (status, body) =
        get("/clients/metro-la/workers/pipeline/logs?pipeline=traffic-flatten&tail=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("fake worker pipeline"), "{body}");
    for (uri, expected) in [
        (
            "/clients/metro-la/workers/pipeline/logs",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/clients/metro-la/workers/pipeline/logs?pipeline=../x",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/clients/metro-la/workers/graph-builder/logs?pipeline=a",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/clients/metro-la/workers/pipeline/logs?pipeline=other",
            StatusCode::NOT_FOUND,
        ),
    ] {
        assert_eq!(get(uri).await.0, expected, "{uri}");
    }
}
