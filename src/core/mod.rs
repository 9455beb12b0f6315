//! Pure, sans-IO decisions: observed objects, offers and `now` in; actions out.
//! No client, no clock.

pub mod budget;
pub mod costsim;
pub mod cron;
pub mod gc;
pub mod idle_auto;
pub mod instance;
pub mod machine;
pub mod matching;
pub mod offers;
pub mod policy;
pub mod pool;
pub mod run;
pub mod transition;
pub mod warm;

use std::time::Duration;

use jiff::Timestamp;

/// `t + d`, saturating at the end of time.
pub(crate) fn add(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d).ok().and_then(|d| t.checked_add(d).ok()).unwrap_or(Timestamp::MAX)
}
