//! Bounded logging of repeated rejections. A flood of bad records (10,000 garbage
//! heartbeats, 100,000 refused registrations) must be counted, not logged line by line: the
//! log lines cost more than the rejections and fill the disk. Per key, the first `burst`
//! lines of each window are let through; the rest are counted, and the next line let
//! through says how many were suppressed. Pure: the caller passes the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What to do with one more line for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVerdict {
    /// Log it; `suppressed` lines of the same key were dropped since the last one logged.
    Log { suppressed: u64 },
    /// Drop it (it is counted).
    Suppress,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// Per-key line budget: `burst` lines per `window`.
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    burst: u32,
    keys: HashMap<&'static str, Window>,
}

impl LogLimiter {
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            window,
            burst,
            keys: HashMap::new(),
        }
    }

    /// Whether a line for `key` at `now` is logged or suppressed.
    pub fn check(&mut self, key: &'static str, now: Instant) -> LogVerdict {
        let window = self.keys.entry(key).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(window.started) >= self.window {
            window.started = now;
            window.logged = 0;
        }
        if window.logged < self.burst {
            window.logged += 1;
            let suppressed = std::mem::take(&mut window.suppressed);
            LogVerdict::Log { suppressed }
        } else {
            window.suppressed += 1;
            LogVerdict::Suppress
        }
    }
}

impl Default for LogLimiter {
    /// Ten lines per reason every ten seconds.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_then_counts_until_the_window_turns() {
        let mut limiter = LogLimiter::new(2, Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(
            limiter.check("not_json", start),
            LogVerdict::Log { suppressed: 0 }
        );
        assert_eq!(
            limiter.check("not_json", start),
            LogVerdict::Log { suppressed: 0 }
        );
        for _ in 0..500 {
            assert_eq!(limiter.check("not_json", start), LogVerdict::Suppress);
        }
        // Another key has its own budget.
        assert_eq!(
            limiter.check("too_large", start),
            LogVerdict::Log { suppressed: 0 }
        );
        let later = start + Duration::from_secs(10);
        assert_eq!(
            limiter.check("not_json", later),
            LogVerdict::Log { suppressed: 500 }
        );
        assert_eq!(
            limiter.check("not_json", later),
            LogVerdict::Log { suppressed: 0 }
        );
        assert_eq!(limiter.check("not_json", later), LogVerdict::Suppress);
    }
}
