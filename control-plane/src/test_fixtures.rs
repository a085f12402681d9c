//! Fixtures the pure modules' table tests share: one instant, the default role set, a
//! client's default specs, and a worker listed running or exited from a spec.

use chrono::{DateTime, Utc};
use kg_shared::ClientId;

use crate::roles::{RoleSet, DEFAULT_IMAGE, DEFAULT_ROLES};
use crate::runtime::{ObservedWorker, RuntimeState, WorkerSpec};

/// `seconds` after the tests' epoch.
pub fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_760_000_000 + seconds, 0).unwrap()
}

/// The built-in default roles.
pub fn default_roles() -> RoleSet {
    let enabled: Vec<String> = DEFAULT_ROLES.iter().map(|r| r.to_string()).collect();
    RoleSet::builtin(&enabled, DEFAULT_IMAGE).unwrap()
}

/// The default workers of `client`.
pub fn specs(client: &str) -> Vec<WorkerSpec> {
    default_roles().render(&ClientId::parse(client).unwrap(), &[])
}

/// `spec`'s worker as a listing shows it, in `state`.
pub fn listed(spec: &WorkerSpec, state: RuntimeState) -> ObservedWorker {
    ObservedWorker {
        name: spec.name.clone(),
        id: format!("id-{}", spec.name).into(),
        client_id: spec.client_id.as_str().into(),
        role: spec.role.clone(),
        spec_hash: spec.spec_hash.clone(),
        state,
    }
}

/// `spec`'s worker, running since the epoch.
pub fn running(spec: &WorkerSpec) -> ObservedWorker {
    listed(spec, RuntimeState::Running { started_at: t(0) })
}

/// `spec`'s worker, exited with `code` at `t(at)`.
pub fn exited(spec: &WorkerSpec, code: i32, at: i64) -> ObservedWorker {
    listed(
        spec,
        RuntimeState::Exited {
            exit_code: Some(code),
            exited_at: t(at),
            oom_killed: false,
        },
    )
}
