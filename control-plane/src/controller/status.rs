//! Readiness as `/ready` reports it, and how current the workers the API shows are: the
//! controller's answer to "can I trust what you show?".

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

/// Readiness, as `/ready` reports it, and how current the workers the API shows are.
#[derive(Debug, Default)]
pub struct Status {
    pub registry_replayed: AtomicBool,
    pub first_listing_done: AtomicBool,
    listing: std::sync::Mutex<Listing>,
    /// Which clients this control plane acts on, as the controller last applied it.
    ownership: std::sync::Mutex<crate::ownership::Ownership>,
}

/// The runtime's listings: when the last one succeeded, and since when and why they fail.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    pub last_listed_at: Option<DateTime<Utc>>,
    pub failing: Option<ListingFailure>,
}

/// The runtime cannot be listed: what the controller knows of the workers is as of
/// [`Listing::last_listed_at`].
#[derive(Debug, Clone, PartialEq)]
pub struct ListingFailure {
    pub since: DateTime<Utc>,
    pub error: String,
}

impl Status {
    /// Ready: the registry replayed, the runtime listed once, and listable now.
    pub fn ready(&self) -> bool {
        self.registry_replayed.load(Ordering::Relaxed)
            && self.first_listing_done.load(Ordering::Relaxed)
            && self.listing().failing.is_none()
    }

    pub fn listing(&self) -> Listing {
        self.listing
            .lock()
            .map(|listing| listing.clone())
            .unwrap_or_default()
    }

    pub fn ownership(&self) -> crate::ownership::Ownership {
        self.ownership
            .lock()
            .map(|ownership| ownership.clone())
            .unwrap_or_default()
    }

    pub fn set_ownership(&self, ownership: &crate::ownership::Ownership) {
        if let Ok(mut shown) = self.ownership.lock() {
            shown.clone_from(ownership);
        }
    }

    /// A listing succeeded at `now`.
    pub fn listed(&self, now: DateTime<Utc>) {
        if let Ok(mut listing) = self.listing.lock() {
            listing.last_listed_at = Some(now);
            listing.failing = None;
        }
        self.first_listing_done.store(true, Ordering::Relaxed);
    }

    /// A listing failed at `now`; the first failure of a run is when it started.
    pub fn listing_failed(&self, now: DateTime<Utc>, error: String) {
        if let Ok(mut listing) = self.listing.lock() {
            let since = listing
                .failing
                .as_ref()
                .map_or(now, |failing| failing.since);
            listing.failing = Some(ListingFailure { since, error });
        }
    }
}
