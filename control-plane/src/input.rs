//! The controller's inputs: everything that changes what it wants, as one enum, whoever
//! sends it.

use chrono::{DateTime, Utc};
use kg_shared::registry::RegistryMessage;
use kg_shared::ClientId;

use crate::admission::{Arrival, RefillMarks};

/// What the controller is told: by ingest (the registry, heartbeats), by the registry's
/// re-read (`crate::refill`) and by operators over the API.
#[derive(Debug, Clone)]
pub enum Input {
    Registry {
        message: RegistryMessage,
        at: DateTime<Utc>,
        /// Where the record stands in the registry: the clients' arrival order.
        arrival: Arrival,
    },
    Heartbeat {
        client_id: ClientId,
        at: DateTime<Utc>,
    },
    /// A registry record read again for admission (`crate::refill`): a stretch ingest has
    /// already applied, so it may only bring back what admission dropped.
    Refilled {
        message: RegistryMessage,
        at: DateTime<Utc>,
        arrival: Arrival,
    },
    /// A re-read of the registry ended; where it stopped in partitions it did not finish.
    RefillDone { unfinished: RefillMarks },
    /// Everything that was on `cluster.registry` at start-up has been applied, and so have
    /// the heartbeats of the last timeout that were on `cluster.heartbeat`.
    RegistryReplayed,
    /// An operator asked (over the API) to restart a client's workers: all, one role, or
    /// only the failed ones.
    Restart(RestartRequest),
    /// The ownership group (`crate::ownership`) gave this control plane clients, or took
    /// some away.
    Ownership(crate::ownership::OwnershipChange),
}

/// An operator's request to restart a client's workers: all of them, one role, or only the
/// failed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartRequest {
    pub client_id: ClientId,
    /// One role's workers only.
    pub role: Option<kg_shared::Role>,
    pub only_failed: bool,
}
