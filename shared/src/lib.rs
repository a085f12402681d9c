//! The project's shared vocabulary. Pure modules: [`topics`] (the topic catalog),
//! [`keys`] (tenant extraction from record keys), [`client_id`] (validated client ids),
//! [`registry`] and [`heartbeat`] (tolerant decoding of what deployed agents send),
//! [`records`] (the normalized event and log records), [`dlq`] (dead-letter envelopes),
//! [`role`] (the worker roles), [`health`] (a worker's `/health` answer) and
//! [`pipeline_template`] (the operator's pipeline definitions).
//! With the `kafka` feature, [`kafka`] adds the Kafka glue: client configuration from the
//! environment, the embedded broker, and topic setup, and [`checks`] the start-up checks
//! both binaries run (data directory, free space, Kafka, topics); with `telemetry`, [`telemetry`]
//! sets up tracing and waits for the termination signal.

pub mod attribution;
pub mod client_id;
pub mod dlq;
pub mod health;
pub mod heartbeat;
pub mod keys;
pub mod log_limit;
pub mod pipeline_template;
pub mod records;
pub mod registry;
pub mod role;
pub mod topics;

#[cfg(feature = "kafka")]
pub mod checks;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
pub mod topic_setup;
#[cfg(feature = "kafka")]
pub mod unreadable;

#[cfg(feature = "telemetry")]
pub mod exposition;
#[cfg(feature = "telemetry")]
pub mod telemetry;

pub use client_id::{ClientId, InvalidClientId};
pub use role::{Role, UnknownRole};
