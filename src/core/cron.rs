//! Cron schedules of five fields — minute, hour, day of month, month, day of week — as
//! warm windows (`Pool.spec.warm.windows[].schedule`) write them, and their next firing.
//!
//! Each field is a comma-separated list of items: `*`, a value `5`, a range `1-5`, each
//! optionally with a step (`*/15`, `0-30/10`, `5/15`: from 5 to the field's end). Values
//! are numbers: minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-7
//! (0 and 7 are Sunday). As in the classic cron, when both day fields are restricted (neither
//! starts with `*`) a day matches if either does; otherwise it must match both.
//!
//! Times are civil times of a time zone; a firing that falls into a daylight-saving gap
//! happens at the first instant after the gap, one in a repeated hour at its first pass.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::api::resources::SpecError;

/// A parsed schedule. Each field is a bit set of the values it matches.
#[derive(Clone, Debug, PartialEq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Whether the day-of-month field / the day-of-week field starts with `*`.
    any_day: bool,
    any_weekday: bool,
}

/// (name, lowest, highest) of each field, in order.
const FIELDS: [(&str, u32, u32); 5] =
    [("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7)];

/// How many days ahead a firing is looked for: long enough for February 29 on a given
/// weekday (28 years apart at most), short enough to answer at once.
const HORIZON_DAYS: i64 = 366 * 29;

impl Cron {
    /// Parses `schedule`; errors name `field` (e.g. `spec.warm.windows[0].schedule`), the
    /// schedule and what is wrong with it.
    pub fn parse(field: &str, schedule: &str) -> Result<Cron, SpecError> {
        let err = |reason: String| SpecError::new(field, schedule, reason);
        let parts: Vec<&str> = schedule.split_ascii_whitespace().collect();
        if parts.len() != 5 {
            return Err(err(format!(
                "a schedule has 5 fields (minute hour day-of-month month day-of-week), this one {}",
                parts.len()
            )));
        }
        let mut sets = [0u64; 5];
        for (k, (part, &(name, lo, hi))) in parts.iter().zip(FIELDS.iter()).enumerate() {
            sets[k] = parse_field(part, lo, hi).map_err(|why| err(format!("{name} {part:?}: {why}")))?;
        }
        // Sunday is 0 and 7.
        let weekdays = ((sets[4] | (sets[4] >> 7)) & 0x7f) as u8;
        let cron = Cron {
            minutes: sets[0],
            hours: sets[1] as u32,
            days: sets[2] as u32,
            months: sets[3] as u16,
            weekdays,
            any_day: parts[2].starts_with('*'),
            any_weekday: parts[4].starts_with('*'),
        };
        if !cron.can_fire() {
            return Err(err("no month has such a day, so it would never fire".into()));
        }
        Ok(cron)
    }

    /// Whether some date matches (day 31 of a 30-day month alone never does).
    fn can_fire(&self) -> bool {
        if !self.any_day && !self.any_weekday {
            return true;
        }
        (1..=12u8).filter(|m| self.months & (1 << m) != 0).any(|m| {
            let longest = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m as usize - 1];
            (1..=longest).any(|d| self.days & (1 << d) != 0)
        })
    }

    fn matches_date(&self, d: Date) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.any_day || self.any_weekday {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first firing at or after civil time `from` (to the minute), within the horizon.
    fn next_civil(&self, from: DateTime) -> Option<DateTime> {
        let mut date = from.date();
        let mut start = (from.hour() as u32, from.minute() as u32);
        if from.second() > 0 || from.subsec_nanosecond() > 0 {
            start.1 += 1;
        }
        for _ in 0..HORIZON_DAYS {
            if self.matches_date(date) {
                for h in start.0..24 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let first = if h == start.0 { start.1 } else { 0 };
                    if let Some(m) = (first..60).find(|m| self.minutes & (1 << m) != 0) {
                        return Some(date.at(h as i8, m as i8, 0, 0));
                    }
                }
            }
            date = date.tomorrow().ok()?;
            start = (0, 0);
        }
        None
    }

    /// The first firing at or after `t`, in time zone `tz`.
    pub fn next_at_or_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut from = tz.to_datetime(t);
        // A firing whose civil time maps to an instant before `t` (a repeated hour) is
        // skipped: look again from the next minute.
        for _ in 0..3 {
            let civil = self.next_civil(from)?;
            let at = tz.to_ambiguous_timestamp(civil).compatible().ok()?;
            if at >= t {
                return Some(at);
            }
            from = civil.checked_add(1.minute()).ok()?;
        }
        None
    }
}

/// One field's bit set, or why it is not valid.
fn parse_field(s: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let mut set = 0u64;
    for item in s.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, st)) => {
                let step: u32 = st.parse().map_err(|_| format!("step {st:?} is not a number"))?;
                if step == 0 {
                    return Err("a step of 0".into());
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let num = |v: &str| -> Result<u32, String> {
            let n: u32 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
            if n < lo || n > hi {
                return Err(format!("{n} is out of range {lo}-{hi}"));
            }
            Ok(n)
        };
        let (from, to) = match range {
            "*" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("range {a}-{b} runs backwards"));
                    }
                    (a, b)
                }
                // `5/15`: from 5 to the end of the field.
                None if step.is_some() => (num(r)?, hi),
                None => {
                    let n = num(r)?;
                    (n, n)
                }
            },
        };
        let step = step.unwrap_or(1) as usize;
        for v in (from..=to).step_by(step) {
            set |= 1 << v;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(schedule: &str, from: &str) -> String {
        let c = Cron::parse("schedule", schedule).unwrap();
        c.next_at_or_after(at(from), &TimeZone::UTC).unwrap().to_string()
    }

    #[test]
    fn fires_on_the_next_matching_minute() {
        // 2026-11-28 is a Saturday.
        assert_eq!(next("0 8 * * 1-5", "2026-11-28T10:00:00Z"), "2026-11-30T08:00:00Z");
        assert_eq!(next("0 8 * * 1-5", "2026-11-30T08:00:00Z"), "2026-11-30T08:00:00Z", "at or after");
        assert_eq!(next("0 8 * * 1-5", "2026-11-30T08:00:01Z"), "2026-12-01T08:00:00Z");
        assert_eq!(next("*/15 * * * *", "2026-11-28T10:01:00Z"), "2026-11-28T10:15:00Z");
        assert_eq!(next("5/20 9 * * *", "2026-11-28T09:26:00Z"), "2026-11-28T09:45:00Z");
        assert_eq!(next("0 0 1,15 * *", "2026-11-16T00:00:00Z"), "2026-12-01T00:00:00Z");
        assert_eq!(next("30 23 31 12 *", "2026-01-01T00:00:00Z"), "2026-12-31T23:30:00Z");
        assert_eq!(next("0 0 29 2 *", "2026-03-01T00:00:00Z"), "2028-02-29T00:00:00Z");
        assert_eq!(next("0 12 * * 7", "2026-11-28T13:00:00Z"), "2026-11-29T12:00:00Z", "7 is Sunday");
        // Both day fields restricted: either matches (the 1st, or a Monday).
        assert_eq!(next("0 0 1 * 1", "2026-11-24T00:00:00Z"), "2026-11-30T00:00:00Z");
        assert_eq!(next("0 0 1 * 1", "2026-11-30T00:00:01Z"), "2026-12-01T00:00:00Z");
    }

    #[test]
    fn follows_the_time_zone_across_daylight_saving() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let c = Cron::parse("schedule", "0 8 * * *").unwrap();
        assert_eq!(c.next_at_or_after(at("2026-03-28T08:00:00Z"), &tz).unwrap(), at("2026-03-29T06:00:00Z"));
        assert_eq!(c.next_at_or_after(at("2026-03-27T08:00:00Z"), &tz).unwrap(), at("2026-03-28T07:00:00Z"));
        // 02:30 does not exist on 2026-03-29 in Berlin: it fires at 03:00 local.
        let gap = Cron::parse("schedule", "30 2 * * *").unwrap();
        assert_eq!(gap.next_at_or_after(at("2026-03-29T00:00:00Z"), &tz).unwrap(), at("2026-03-29T01:30:00Z"));
    }

    #[test]
    fn bad_schedules_name_the_field_the_schedule_and_the_part() {
        let err = |s: &str| Cron::parse("spec.warm.windows[0].schedule", s).unwrap_err().to_string();
        let e = err("0 25 * * *");
        assert!(e.contains("spec.warm.windows[0].schedule") && e.contains("\"0 25 * * *\""), "{e}");
        assert!(e.contains("hour \"25\": 25 is out of range 0-23"), "{e}");
        assert!(err("0 8 * *").contains("5 fields"), "{}", err("0 8 * *"));
        assert!(err("0 18-8 * * *").contains("range 18-8 runs backwards"));
        assert!(err("*/0 * * * *").contains("a step of 0"));
        assert!(err("0 8 * * MON").contains("\"MON\" is not a number"));
        assert!(err("0 0 31 2,4 *").contains("never fire"));
        assert!(Cron::parse("f", "0 0 31 2 1").is_ok(), "either day field: Mondays in February");
    }
}
