//! Admission: which new clients the control plane takes on. A maximum number of
//! clients, a maximum rate of new registrations (a token bucket), and an optional
//! allowlist. A refused registration is refused with a reason, logged and counted, never
//! queued: the agent registers again on its next install or upgrade. Repeats of an admitted
//! client and the registry's replay at start-up are never refused for rate, so a restart
//! does not lose clients it already had.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

/// Admission limits.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionSettings {
    pub max_clients: usize,
    /// New clients per minute; the bucket holds as many.
    pub max_new_per_minute: u32,
    /// When not empty, only these client ids are admitted.
    pub allowlist: HashSet<String>,
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotAllowed,
    TooManyClients,
    RateLimited,
}

impl Refusal {
    pub fn reason_code(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::TooManyClients => "max_clients",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// The admission state: a token bucket refilled with injected time.
#[derive(Debug, Clone)]
pub struct Admission {
    settings: AdmissionSettings,
    tokens: f64,
    refilled_at: Option<DateTime<Utc>>,
}

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Self {
        let tokens = settings.max_new_per_minute as f64;
        Self {
            settings,
            tokens,
            refilled_at: None,
        }
    }

    /// Decides on a registration of a client not in the table yet. `replaying`: the
    /// registry's replay at start-up, which is not rate limited.
    pub fn admit_new(
        &mut self,
        client: &str,
        current_clients: usize,
        replaying: bool,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        if !self.settings.allowlist.is_empty() && !self.settings.allowlist.contains(client) {
            return Err(Refusal::NotAllowed);
        }
        if current_clients >= self.settings.max_clients {
            return Err(Refusal::TooManyClients);
        }
        if replaying {
            return Ok(());
        }
        let rate = self.settings.max_new_per_minute as f64;
        let last = *self.refilled_at.get_or_insert(now);
        let elapsed = (now - last).num_milliseconds().max(0) as f64 / 60_000.0;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled_at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Refusal::RateLimited)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_760_000_000 + seconds, 0).unwrap()
    }

    fn settings() -> AdmissionSettings {
        AdmissionSettings {
            max_clients: 3,
            max_new_per_minute: 2,
            allowlist: HashSet::new(),
        }
    }

    #[test]
    fn a_registration_flood_is_refused_past_the_rate_and_refills_with_time() {
        let mut admission = Admission::new(settings());
        assert_eq!(admission.admit_new("a", 0, false, t(0)), Ok(()));
        assert_eq!(admission.admit_new("b", 1, false, t(0)), Ok(()));
        assert_eq!(
            admission.admit_new("c", 2, false, t(1)),
            Err(Refusal::RateLimited)
        );
        assert_eq!(admission.admit_new("c", 2, false, t(31)), Ok(()));
    }

    #[test]
    fn the_client_limit_and_the_allowlist_are_enforced_even_on_replay() {
        let mut admission = Admission::new(settings());
        assert_eq!(
            admission.admit_new("d", 3, true, t(0)),
            Err(Refusal::TooManyClients)
        );
        let mut listed = Admission::new(AdmissionSettings {
            allowlist: ["af-9".to_string()].into(),
            ..settings()
        });
        assert_eq!(listed.admit_new("af-9", 0, false, t(0)), Ok(()));
        assert_eq!(
            listed.admit_new("af-10", 0, false, t(0)),
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn the_replay_is_not_rate_limited() {
        let mut admission = Admission::new(AdmissionSettings {
            max_clients: 1000,
            ..settings()
        });
        for n in 0..100 {
            assert_eq!(admission.admit_new(&format!("c{n}"), n, true, t(0)), Ok(()));
        }
    }
}
