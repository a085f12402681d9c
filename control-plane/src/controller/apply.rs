//! Applying one input: the registry's records (admitted, or put in the waiting line),
//! heartbeats, re-read registrations, and operators' restart requests. Nothing here calls
//! the runtime; what changes is what the next reconcile pass wants.

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use kg_shared::log_limit::LogVerdict;
use kg_shared::registry::{Registration, RegistryMessage};
use kg_shared::ClientId;
use tracing::{info, warn};

use super::Controller;
use crate::admission::{Arrival, Deferral};
use crate::events::Lifecycle;
use crate::input::Input;
use crate::metrics::ReasonLabel;
use crate::table::Applied;

impl Controller {
    /// Applies one input to the table.
    pub fn apply(&mut self, input: Input) {
        match input {
            Input::Restart(request) => self.restart_requests.push(request),
            Input::Ownership(change) => self.apply_ownership(change),
            Input::RegistryReplayed => {
                self.registry_replayed = true;
                self.status.registry_replayed.store(true, Ordering::Relaxed);
            }
            Input::Refilled {
                message: RegistryMessage::Register(registration),
                at,
                arrival,
            } => self.apply_refilled(&registration, at, arrival),
            Input::Refilled {
                message: RegistryMessage::Deregister(client),
                ..
            } => {
                self.admission.withdraw_refilled(&client);
            }
            Input::RefillDone { unfinished } => {
                if !unfinished.is_empty() {
                    warn!(
                        partitions = unfinished.len(),
                        "the registry re-read stopped early; it resumes from where it stopped"
                    );
                }
                self.admission.refill_done(unfinished);
            }
            Input::Registry {
                message: RegistryMessage::Register(registration),
                at,
                arrival,
            } => self.apply_registration(registration, at, arrival),
            Input::Registry {
                message: RegistryMessage::Deregister(client),
                at,
                ..
            } => self.apply_deregistration(&client, at),
            Input::Heartbeat { client_id, at } => self.apply_heartbeat(&client_id, at),
        }
    }

    /// A registration read again for admission: it may only fill the waiting line.
    fn apply_refilled(&mut self, registration: &Registration, at: DateTime<Utc>, arrival: Arrival) {
        // Ingest applied this stretch of the registry already: a client it put in the
        // table, or deregistered after this record (a tombstone ingest read while the
        // re-read was still behind it), is not brought back.
        let client = &registration.client_id;
        if self.writer.contains(client)
            || self.writer.is_superseded(client, at)
            || self.is_shared(client)
        {
            return;
        }
        let deferral = self.admission.defer_refilled(registration, at, arrival);
        if let Some(Ok(Deferral::Waiting {
            again: false,
            displaced,
        })) = deferral
        {
            if displaced {
                self.metrics.admission_displaced.inc();
            }
            self.count_deferral("refilled");
        }
    }

    /// A registration from ingest: applied if the client is admitted, refused if its id
    /// is reserved, and otherwise put in the waiting line (decided once per pass).
    fn apply_registration(
        &mut self,
        registration: Registration,
        at: DateTime<Utc>,
        arrival: Arrival,
    ) {
        let client = registration.client_id.clone();
        if self.is_shared(&client) {
            self.metrics
                .admission_refused
                .get_or_create(&ReasonLabel {
                    reason: "reserved_id".into(),
                })
                .inc();
            warn!(client_id = %client, "registration refused: the id is reserved for the shared workers");
            return;
        }
        if self.writer.contains(&client) {
            let now = self.clock.now();
            self.register_admitted(registration, at, now, "");
            return;
        }
        // Not admitted yet: it waits for its turn (`admission`). Counted, and logged
        // boundedly: a flood of distinct ids must not grow the log or the per-client
        // event lists.
        let deferral = self.admission.defer(&registration, at, arrival);
        if let Ok(Deferral::Waiting {
            displaced: true, ..
        }) = deferral
        {
            self.metrics.admission_displaced.inc();
        }
        let reason = match deferral {
            Err(refusal) => {
                let reason = refusal.reason_code();
                self.metrics
                    .admission_refused
                    .get_or_create(&ReasonLabel {
                        reason: reason.into(),
                    })
                    .inc();
                reason
            }
            Ok(deferral) => {
                let reason = match deferral {
                    Deferral::Waiting { again: true, .. } => "waiting_again",
                    deferral => deferral.reason_code(),
                };
                self.count_deferral(reason);
                reason
            }
        };
        if let LogVerdict::Log { suppressed } =
            self.admission_log.check(reason, std::time::Instant::now())
        {
            info!(client_id = %client, reason, suppressed_since_last = suppressed, "registration not admitted yet");
        }
    }

    fn count_deferral(&self, reason: &str) {
        self.metrics
            .admission_deferred
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// A tombstone: a waiting client leaves the line; an admitted one leaves the table
    /// (its workers go on the next pass, and its data after them if so configured).
    fn apply_deregistration(&mut self, client: &ClientId, at: DateTime<Utc>) {
        match self.writer.deregister(client, at) {
            _ if self.admission.withdraw(client) => {
                info!(client_id = %client, "deregistered while waiting for admission");
            }
            Applied::Deregistered => {
                self.metrics.deregistrations.inc();
                self.lifecycle(
                    client.as_str(),
                    Lifecycle::ClientDeregistered,
                    None,
                    String::new(),
                );
                self.specs.remove(client);
                if self.settings.delete_data_on_deregister {
                    self.data_to_remove.insert(client.to_string());
                }
            }
            Applied::Superseded => {
                info!(client_id = %client, "tombstone older than the latest registration; ignored");
            }
            _ => {}
        }
    }

    fn apply_heartbeat(&mut self, client_id: &ClientId, at: DateTime<Utc>) {
        let now = self.clock.now();
        match self.writer.heartbeat(client_id, at, now) {
            Applied::Heartbeat { revived } => {
                self.metrics.heartbeats.inc();
                // During the replay a registration older than the timeout is provisionally
                // stale until its replayed heartbeats arrive; that is no revival, and
                // nothing was reaped.
                if revived && self.registry_replayed {
                    self.lifecycle(
                        client_id.as_str(),
                        Lifecycle::ClientRevived,
                        None,
                        "heartbeat from a stale client".into(),
                    );
                }
            }
            // A client waiting for admission: its liveness goes in with it.
            Applied::UnknownClientHeartbeat if self.admission.heartbeat(client_id, at) => {
                self.metrics.heartbeats.inc();
            }
            Applied::UnknownClientHeartbeat => {
                // Counted, not logged: an unregistered agent heartbeats forever.
                self.metrics.heartbeats_unknown_client.inc();
            }
            _ => {}
        }
    }

    /// Whether `client` is the shared workers' reserved id.
    fn is_shared(&self, client: &ClientId) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|(shared, _)| shared == client)
    }

    /// Puts an admitted client's registration in the table (or applies a repeat of one
    /// already there).
    pub(super) fn register_admitted(
        &mut self,
        registration: Registration,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
        how: &str,
    ) {
        let client = registration.client_id.clone();
        let split = registration.recovered_from_split;
        let requests = crate::pipelines::requested(
            registration.fields.get(crate::pipelines::FIELD),
            &self.pipelines,
        );
        // Refusals are reported when they change, not on every repeat of the same
        // registration (an agent restarting in a loop, a control plane replaying the
        // registry), which would push the client's other events out of its list.
        let refused_before = self.writer.table().get(&client).map(|record| {
            let field = crate::pipelines::field_of(record.registration.get());
            crate::pipelines::requested(field.as_ref(), &self.pipelines).refused
        });
        match self.writer.register(registration, at, now) {
            Applied::Registered { first_time } => {
                self.metrics.registrations.inc();
                self.data_to_remove.remove(client.as_str());
                // What it asks for may have changed: its specs are rendered again.
                self.specs.remove(&client);
                if refused_before.as_ref() != Some(&requests.refused) {
                    self.refuse_pipelines(&client, &requests.refused);
                }
                if first_time {
                    self.lifecycle(
                        client.as_str(),
                        Lifecycle::ClientRegistered,
                        None,
                        format!("recovered_from_split={split}{how}"),
                    );
                } else {
                    info!(event = "client_reregistered", client_id = %client, recovered_from_split = split, "registration repeated");
                }
            }
            Applied::Superseded => {
                info!(client_id = %client, "registration older than the latest registry event; ignored");
            }
            _ => {}
        }
    }

    /// Reports each pipeline a registration asked for that will not run: a lifecycle
    /// event (counted, logged, in the client's events), and a count by reason.
    fn refuse_pipelines(&mut self, client: &ClientId, refused: &[crate::pipelines::Refused]) {
        for refusal in refused {
            self.metrics
                .pipeline_requests_refused
                .get_or_create(&ReasonLabel {
                    reason: refusal.reason.code().into(),
                })
                .inc();
            self.lifecycle(
                client.as_str(),
                Lifecycle::PipelineRefused,
                None,
                refusal.to_string(),
            );
        }
    }
}
