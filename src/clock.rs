//! The gateway's clock. Every time the gateway records or compares comes from here, never from
//! the database's `NOW()`, so tests can move time (e.g. across midnight) deterministically.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

#[derive(Clone)]
pub enum Clock {
    System,
    /// A clock whose time is set by hand (milliseconds since the Unix epoch).
    Manual(Arc<AtomicI64>),
}

impl Clock {
    pub fn manual(at: DateTime<Utc>) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(at.timestamp_millis())))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Manual(ms) => from_ms(ms.load(Ordering::SeqCst)),
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }

    /// Set a manual clock; no effect on the system clock.
    pub fn set(&self, at: DateTime<Utc>) {
        if let Clock::Manual(ms) = self {
            ms.store(at.timestamp_millis(), Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clock::System => f.write_str("Clock::System"),
            Clock::Manual(_) => write!(f, "Clock::Manual({})", self.now()),
        }
    }
}

/// Milliseconds since the epoch → UTC time (out-of-range values clamp to the epoch).
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Unix ms as the API writes every timestamp: RFC 3339 in UTC with `Z`, fractions only when
/// non-zero (the same text as chrono's serde of `DateTime<Utc>`).
pub fn rfc3339(ms: i64) -> String {
    from_ms(ms).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}
