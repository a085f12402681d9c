//! The worker roles: the one name for each job a worker process does, shared by the worker
//! (`--role`), the control plane (roles file, worker specs, the API's restart command) and
//! the worker's `/health` answer. A role's name is what appears in container names,
//! consumer groups, labels and `--role`; [`Role::as_str`], [`std::fmt::Display`],
//! [`std::str::FromStr`] and serde all use it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::topics::{
    EVENTS_NORMALIZED, LOGS_NORMALIZED, RAW_K8S_EVENTS, RAW_K8S_LOGS, STATE_K8S_RESOURCE,
    STATE_K8S_TOPOLOGY,
};
use crate::ClientId;

/// Which job a worker process does for its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// raw.k8s.events → events.normalized
    EventNormalizer,
    /// raw.k8s.logs → logs.normalized
    LogNormalizer,
    /// events.normalized, logs.normalized, state.k8s.* → the client's graph store
    GraphBuilder,
    /// Shared by every client, not one client's: untagged raw Events on events.normalized
    /// and raw.k8s.events → raw.k8s.events keyed `<client>::event::<uid>`, for the one
    /// client that reported the involved object on state.k8s.resource.
    EventAttributor,
    /// An operator-defined pipeline (`--pipeline NAME`, one container per pipeline and
    /// client): its topics and stages come from the pipeline templates file
    /// ([`crate::pipeline_template`]).
    Pipeline,
}

impl Role {
    /// Every role, in the order `--help` lists them.
    pub const ALL: [Role; 5] = [
        Role::EventNormalizer,
        Role::LogNormalizer,
        Role::GraphBuilder,
        Role::EventAttributor,
        Role::Pipeline,
    ];

    /// The name used in container names, consumer groups and `--role`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::EventNormalizer => "event-normalizer",
            Role::LogNormalizer => "log-normalizer",
            Role::GraphBuilder => "graph-builder",
            Role::EventAttributor => "event-attributor",
            Role::Pipeline => "pipeline",
        }
    }

    /// The topics the role consumes; none for [`Role::Pipeline`], whose topics are its
    /// template's.
    pub fn input_topics(self) -> &'static [&'static str] {
        match self {
            Role::EventNormalizer => &[RAW_K8S_EVENTS],
            Role::LogNormalizer => &[RAW_K8S_LOGS],
            Role::GraphBuilder => &[
                EVENTS_NORMALIZED,
                LOGS_NORMALIZED,
                STATE_K8S_RESOURCE,
                STATE_K8S_TOPOLOGY,
            ],
            Role::EventAttributor => &[EVENTS_NORMALIZED, RAW_K8S_EVENTS],
            Role::Pipeline => &[],
        }
    }

    /// Whether the role keeps state on disk (its data directory must be writable).
    pub fn keeps_state(self) -> bool {
        self == Role::GraphBuilder
    }

    /// The consumer group operators' scripts expect: `<role>-<client id>`.
    pub fn consumer_group(self, client: &ClientId) -> String {
        format!("{}-{}", self.as_str(), client)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no role's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; known roles: {known:?}", known = names(&Role::ALL))]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(name: &str) -> Result<Self, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == name)
            .ok_or_else(|| UnknownRole(name.to_string()))
    }
}

/// The names of `roles`, in order: `["event-normalizer", …]` once formatted with `{:?}`.
pub fn names(roles: &[Role]) -> Vec<&'static str> {
    roles.iter().map(|role| role.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_reads_back_from_its_name_in_every_form() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
            assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role);
        }
        assert_eq!(
            names(&Role::ALL),
            [
                "event-normalizer",
                "log-normalizer",
                "graph-builder",
                "event-attributor",
                "pipeline"
            ]
        );
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_known_ones() {
        let error = "miner".parse::<Role>().unwrap_err();
        assert_eq!(error, UnknownRole("miner".into()));
        assert_eq!(
            error.to_string(),
            "unknown role \"miner\"; known roles: [\"event-normalizer\", \"log-normalizer\", \
             \"graph-builder\", \"event-attributor\", \"pipeline\"]"
        );
        // Names are exact: no other case, no padding.
        assert!("Event-Normalizer".parse::<Role>().is_err());
        assert!(" graph-builder".parse::<Role>().is_err());
        assert!(serde_json::from_str::<Role>("\"miner\"").is_err());
    }

    #[test]
    fn the_topic_facts_of_each_role() {
        let client = ClientId::parse("af-9").unwrap();
        assert_eq!(
            Role::GraphBuilder.consumer_group(&client),
            "graph-builder-af-9"
        );
        assert!(Role::GraphBuilder.keeps_state());
        assert!(!Role::EventNormalizer.keeps_state());
        assert_eq!(Role::LogNormalizer.input_topics(), [RAW_K8S_LOGS]);
    }
}
