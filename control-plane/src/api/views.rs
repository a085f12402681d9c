//! What the API shows of a client: its record, with how current its workers are.

use serde_json::json;

use crate::controller::Listing;
use crate::ownership::Ownership;
use crate::table::ClientRecord;

/// A client as the API shows it: its record, and how current its workers are. While the
/// runtime cannot be listed, the workers are marked as last known, with the reason: a
/// worker shown running may have died since, and a new client's workers may not exist.
///
/// With several control planes, every one shows every client; `acted_on_here` says whether
/// this one acts on it (another one's workers show what the runtime says, without their
/// supervision), and `registry_partition` which partition's owner does.
pub(super) fn client_view(
    record: &ClientRecord,
    listing: &Listing,
    ownership: &Ownership,
) -> serde_json::Value {
    let mut view = serde_json::to_value(record).unwrap_or_default();
    if let Some(object) = view.as_object_mut() {
        object.insert(
            "acted_on_here".into(),
            json!(ownership.owns(record.client_id.as_str())),
        );
        if let Ownership::Partitions { count, .. } = ownership {
            object.insert(
                "registry_partition".into(),
                json!(crate::ownership::partition_of(
                    record.client_id.as_str(),
                    *count
                )),
            );
        }
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
