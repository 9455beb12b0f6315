//! Warm headroom over time: how many idle warm instances a pool wants at `now`
//! (`spec.warm.minIdle`, or the largest `minIdle` of its open windows), and when that
//! next changes, so that the pool controller wakes exactly then.

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::cron::Cron;
use crate::api::conditions::{find, READY};
use crate::api::duration::parse_duration;
use crate::api::instance::{Instance, InstancePhase};
use crate::api::pool::{WarmSpec, WarmWindow};
use crate::api::resources::SpecError;

/// How many consecutive firings are followed to find where a chain of overlapping
/// windows ends; past that, the window is taken to end at the last one seen plus its
/// duration (the pool looks again then).
const CHAIN: usize = 2_000;

/// How long a warm pool waits after a warm instance failed to launch (no offer fits, or
/// every launch was refused) before it launches the next: without it, a pool whose warm
/// resources no offer fits (or whose Backend is being deleted) would create, fail and
/// remove an instance on every pass, as fast as the API answers.
pub const RELAUNCH_BACKOFF: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// The pool's last failed warm instance and when the back-off after it ends, while it has
/// not ended at `now` (`warm` are the pool's warm instances).
pub fn relaunch_backoff<'a>(
    warm: impl Iterator<Item = &'a Instance>,
    now: Timestamp,
) -> Option<(&'a Instance, Timestamp)> {
    let failed = warm.filter(|i| i.status.as_ref().is_some_and(|s| s.phase == InstancePhase::Failed));
    let last = failed.map(|i| (i, failed_at(i))).max_by_key(|(_, at)| *at)?;
    Some((last.0, last.1 + RELAUNCH_BACKOFF)).filter(|(_, until)| *until > now)
}

/// When a Failed instance failed, as near as its status tells: the later of its last
/// failed launch attempt and its `Ready` condition's last change (its creation without
/// either).
fn failed_at(inst: &Instance) -> Timestamp {
    let st = inst.status.as_ref();
    let ready = st.and_then(|s| find(&s.conditions, READY)).map(|c| c.last_transition_time.0);
    let attempt = st.and_then(|s| s.attempts.iter().map(|a| a.at.0).max());
    let created = inst.metadata.creation_timestamp.as_ref().map(|t| t.0);
    ready.max(attempt).or(created).unwrap_or_default()
}

/// What the warm spec asks for at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    /// Idle warm instances wanted now.
    pub min_idle: u32,
    /// The schedules of the windows open now.
    pub open: Vec<String>,
    /// When a window next opens or closes.
    pub next_change: Option<Timestamp>,
}

/// One window, parsed.
struct Window<'a> {
    spec: &'a WarmWindow,
    cron: Cron,
    duration: Duration,
    tz: TimeZone,
}

fn parse(i: usize, w: &WarmWindow) -> Result<Window<'_>, SpecError> {
    let field = |f: &str| format!("spec.warm.windows[{i}].{f}");
    let cron = Cron::parse(&field("schedule"), &w.schedule)?;
    let duration = parse_duration(&field("duration"), &w.duration)?;
    if duration < Duration::from_secs(60) {
        return Err(SpecError::new(field("duration"), &w.duration, "a window is open for a minute at least"));
    }
    let tz = match w.time_zone.as_deref() {
        None => TimeZone::UTC,
        Some(name) => TimeZone::get(name)
            .map_err(|e| SpecError::new(field("timeZone"), name, format!("not a known time zone ({e})")))?,
    };
    Ok(Window { spec: w, cron, duration, tz })
}

/// Whether `w` is open at `now`, and when that next changes (it closes, or it opens).
fn state(w: &Window, now: Timestamp) -> (bool, Option<Timestamp>) {
    let d = jiff::SignedDuration::try_from(w.duration).unwrap_or(jiff::SignedDuration::MAX);
    let minute = jiff::SignedDuration::from_secs(60);
    // The first firing after `now - duration`: open now if it is not after `now`.
    let since = now.checked_sub(d).unwrap_or(Timestamp::MIN);
    let since = since.checked_add(jiff::SignedDuration::from_nanos(1)).unwrap_or(since);
    let Some(mut s) = w.cron.next_at_or_after(since, &w.tz) else { return (false, None) };
    if s > now {
        return (false, Some(s));
    }
    // Open: it closes when no firing comes before the last one's end.
    let mut end = s.checked_add(d).unwrap_or(Timestamp::MAX);
    for _ in 0..CHAIN {
        let after = s.checked_add(minute).unwrap_or(Timestamp::MAX);
        match w.cron.next_at_or_after(after, &w.tz) {
            Some(n) if n <= end => {
                s = n;
                end = end.max(n.checked_add(d).unwrap_or(Timestamp::MAX));
            }
            _ => break,
        }
    }
    (true, Some(end))
}

/// What `warm` wants at `now`. A window that is not valid is an error naming its field
/// and value (the base `minIdle` still stands; the caller says why the window is ignored).
pub fn wanted(warm: &WarmSpec, now: Timestamp) -> (Wanted, Option<SpecError>) {
    let mut out = Wanted { min_idle: warm.min_idle, open: Vec::new(), next_change: None };
    let mut error = None;
    for (i, spec) in warm.windows.iter().enumerate() {
        let w = match parse(i, spec) {
            Ok(w) => w,
            Err(e) => {
                error.get_or_insert(e);
                continue;
            }
        };
        let (open, change) = state(&w, now);
        if open {
            out.min_idle = out.min_idle.max(w.spec.min_idle);
            out.open.push(w.spec.schedule.clone());
        }
        out.next_change = match (out.next_change, change) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    (out, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn window(schedule: &str, duration: &str, min_idle: u32) -> WarmWindow {
        WarmWindow { schedule: schedule.into(), duration: duration.into(), min_idle, time_zone: None }
    }

    fn spec(min_idle: u32, windows: Vec<WarmWindow>) -> WarmSpec {
        WarmSpec { min_idle, windows, ..Default::default() }
    }

    #[test]
    fn a_working_day_window_opens_and_closes_on_time() {
        // 2026-11-30 is a Monday.
        let s = spec(1, vec![window("0 8 * * 1-5", "10h", 4)]);
        let (w, e) = wanted(&s, at("2026-11-29T12:00:00Z"));
        assert!(e.is_none());
        assert_eq!(w, Wanted { min_idle: 1, open: vec![], next_change: Some(at("2026-11-30T08:00:00Z")) });
        let (w, _) = wanted(&s, at("2026-11-30T08:00:00Z"));
        let open = vec!["0 8 * * 1-5".to_string()];
        assert_eq!(w, Wanted { min_idle: 4, open: open.clone(), next_change: Some(at("2026-11-30T18:00:00Z")) });
        let (w, _) = wanted(&s, at("2026-11-30T17:59:59Z"));
        assert_eq!(w.min_idle, 4);
        let (w, _) = wanted(&s, at("2026-11-30T18:00:00Z"));
        assert_eq!(w, Wanted { min_idle: 1, open: vec![], next_change: Some(at("2026-12-01T08:00:00Z")) });
        // Friday evening: next Monday.
        let (w, _) = wanted(&s, at("2026-12-04T18:00:00Z"));
        assert_eq!(w.next_change, Some(at("2026-12-07T08:00:00Z")));
    }

    #[test]
    fn overlapping_windows_take_the_largest_and_chain() {
        let s = spec(0, vec![window("0 8 * * *", "10h", 2), window("0 12 * * *", "2h", 5)]);
        let (w, _) = wanted(&s, at("2026-11-30T12:30:00Z"));
        assert_eq!(w.min_idle, 5);
        assert_eq!(w.open.len(), 2);
        assert_eq!(w.next_change, Some(at("2026-11-30T14:00:00Z")));
        // Hourly firings open for 90 minutes: one window that never closes.
        let s = spec(0, vec![window("0 * * * *", "90m", 3)]);
        let (w, _) = wanted(&s, at("2026-11-30T12:30:00Z"));
        assert_eq!(w.min_idle, 3);
        assert!(w.next_change.unwrap() > at("2026-11-30T12:30:00Z"));
    }

    #[test]
    fn a_window_reads_its_schedule_in_its_time_zone() {
        let mut w = window("0 8 * * *", "1h", 2);
        w.time_zone = Some("America/New_York".into());
        let (got, e) = wanted(&spec(0, vec![w]), at("2026-11-30T12:00:00Z"));
        assert!(e.is_none(), "{e:?}");
        assert_eq!((got.min_idle, got.next_change), (0, Some(at("2026-11-30T13:00:00Z"))));
    }

    #[test]
    fn a_bad_window_is_named_and_the_base_stands() {
        let mut tz = window("0 8 * * *", "1h", 2);
        tz.time_zone = Some("Mars/Olympus".into());
        let s = spec(1, vec![window("0 8 * * *", "1h", 3), window("0 24 * * *", "1h", 9), tz]);
        let (w, e) = wanted(&s, at("2026-11-30T08:30:00Z"));
        assert_eq!(w.min_idle, 3, "the valid window applies");
        let e = e.unwrap().to_string();
        assert!(e.contains("spec.warm.windows[1].schedule") && e.contains("0 24 * * *"), "{e}");
        let (_, e) = wanted(&spec(0, vec![tz_only()]), at("2026-11-30T08:30:00Z"));
        let e = e.unwrap().to_string();
        assert!(e.contains("spec.warm.windows[0].timeZone") && e.contains("Mars/Olympus"), "{e}");
        let (_, e) = wanted(&spec(0, vec![window("0 8 * * *", "0s", 2)]), at("2026-11-30T08:30:00Z"));
        assert!(e.unwrap().to_string().contains("spec.warm.windows[0].duration"));
    }

    fn tz_only() -> WarmWindow {
        let mut w = window("0 8 * * *", "1h", 2);
        w.time_zone = Some("Mars/Olympus".into());
        w
    }
}
