//! Durations in dstack's syntax: `300` (seconds), `90s`, `5m`, `72h`, `1d`, `2w`.
//!
//! Differences from dstack's `Duration.parse` (dstack 0.22.5), which takes a bare integer or
//! one `NUMBER UNIT` pair:
//! - Several pairs may follow each other, largest unit first, each unit once: `1h30m`,
//!   `1d 12h` (dstack only takes one pair; its own output `1h 15m` is of this form).
//! - Negative values are rejected (dstack reads `-5` as -5 seconds); `off` and `-1` are
//!   left to the callers that accept them (see `core::policy::parse_optional_duration`).
//!
//! [`format_duration`] writes hours, minutes and seconds (`72h`, `1h30m`, `45s`), like Go's
//! `time.Duration` without zero parts; days and weeks are read but never written.

use std::time::Duration;

use crate::api::resources::SpecError;

/// Parses a duration: bare seconds (`300`), or `NUMBER UNIT` pairs with units `s`, `m`,
/// `h`, `d`, `w` (`90s`, `5m`, `72h`, `1d`, `2w`, `1h30m`). Whitespace between a number
/// and its unit and between pairs is allowed.
pub fn parse_duration(field: &str, s: &str) -> Result<Duration, SpecError> {
    let spec = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let err = |token: &str, reason: &str| SpecError::new(field, token, reason);
    if spec.is_empty() {
        return Err(err(spec, "empty duration: give one such as `300`, `5m` or `1h30m`"));
    }
    if spec.starts_with('-') {
        return Err(err(spec, "negative durations are not allowed"));
    }
    if spec.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = spec.parse().map_err(|_| err(spec, "duration is too large"))?;
        return Ok(Duration::from_secs(secs));
    }
    let bytes = spec.as_bytes();
    let mut total: u64 = 0;
    // Index in UNITS of the previous unit; units must come strictly after it.
    let mut previous: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &spec[start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        // The token for errors: this pair, from its number through its unit character.
        let end = (i + 1).min(bytes.len());
        let token = spec.get(start..end).unwrap_or(&spec[start..]);
        if digits.is_empty() {
            let reason = if bytes[start] == b'.' || bytes[start] == b',' {
                "fractions are not supported: write `1h30m` instead of `1.5h`"
            } else {
                "expected a number before the unit, e.g. `5m`"
            };
            return Err(err(token, reason));
        }
        let Some(&unit) = bytes.get(i) else {
            return Err(err(token, "missing unit after the number: use s, m, h, d or w"));
        };
        let Some(index) = UNITS.iter().position(|(u, _)| *u == unit) else {
            let reason = if unit == b'.' || unit == b',' {
                "fractions are not supported: write `1h30m` instead of `1.5h`"
            } else {
                "unknown unit: use s, m, h, d or w"
            };
            return Err(err(token, reason));
        };
        if previous.is_some_and(|p| index <= p) {
            return Err(err(token, "units must go from largest to smallest, each once, e.g. `1h30m`"));
        }
        previous = Some(index);
        let amount: u64 = digits.parse().map_err(|_| err(token, "duration is too large"))?;
        total = amount
            .checked_mul(UNITS[index].1)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| err(token, "duration is too large"))?;
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
    }
    Ok(Duration::from_secs(total))
}

/// Units from largest to smallest, in seconds.
const UNITS: [(u8, u64); 5] = [(b'w', 7 * 86_400), (b'd', 86_400), (b'h', 3_600), (b'm', 60), (b's', 1)];

/// Formats whole seconds compactly in hours, minutes and seconds, leaving out zero parts:
/// `45s`, `5m`, `1h30m`, `72h`, `0s`. Fractions of a second are dropped, so
/// `parse_duration(format_duration(d)) == d` for every whole-second `d`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3_600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (value, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if value > 0 {
            out.push_str(&value.to_string());
            out.push(unit);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: &str = "test.duration";

    #[test]
    #[rustfmt::skip]
    fn accepted() {
        let cases: &[(&str, u64)] = &[
            ("300", 300),
            ("0", 0),
            ("90s", 90),
            ("5m", 300),
            ("72h", 72 * 3600),
            ("1d", 86_400),
            ("2w", 14 * 86_400),
            ("1h30m", 5_400),
            ("1h30m15s", 5_415),
            ("1w2d3h4m5s", 7 * 86_400 + 2 * 86_400 + 3 * 3600 + 4 * 60 + 5),
            ("1d12h", 36 * 3600),
            ("0s", 0),
            ("0h5m", 300),
            ("5 m", 300),
            ("1h 30m", 5_400),
            (" 10m ", 600),
            ("007s", 7),
            ("18446744073709551615", u64::MAX),
            ("18446744073709551615s", u64::MAX),
            ("30500568904943w", 30_500_568_904_943 * 604_800),
        ];
        for (input, secs) in cases {
            let got = parse_duration(F, input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(got, Duration::from_secs(*secs), "{input:?}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn rejected() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "", "empty"),
            ("   ", "", "empty"),
            ("-5", "-5", "negative"),
            ("-5m", "-5m", "negative"),
            ("5x", "5x", "unknown unit"),
            ("5M", "5M", "unknown unit"),
            ("5ms", "s", "expected a number"),
            ("1h30", "30", "missing unit"),
            ("1.5h", "1.", "fractions are not supported"),
            ("h", "h", "expected a number"),
            ("m5", "m", "expected a number"),
            ("5m1h", "1h", "largest to smallest"),
            ("1h1h", "1h", "largest to smallest"),
            ("off", "o", "expected a number"),
            ("18446744073709551616", "18446744073709551616", "too large"),
            ("18446744073709551616s", "18446744073709551616s", "too large"),
            ("30500568904944w", "30500568904944w", "too large"),
            ("1w18446744073709551615s", "18446744073709551615s", "too large"),
            ("5m;", ";", "expected a number"),
            ("1h+30m", "+", "expected a number"),
        ];
        for (input, token, reason) in cases {
            let e = parse_duration(F, input).expect_err(input);
            assert_eq!(e.field, F, "{input:?}");
            assert_eq!(e.token, *token, "token of {input:?} ({e})");
            assert!(e.reason.contains(reason), "{input:?}: {:?} lacks {reason:?}", e.reason);
        }
    }

    #[test]
    #[rustfmt::skip]
    fn formats_compactly() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (45, "45s"),
            (60, "1m"),
            (300, "5m"),
            (3_600, "1h"),
            (5_400, "1h30m"),
            (5_415, "1h30m15s"),
            (3_605, "1h5s"),
            (86_400, "24h"),
            (72 * 3_600, "72h"),
            (u64::MAX, "5124095576030431h15s"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_duration(Duration::from_secs(*secs)), *want, "{secs}");
        }
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1s");
        assert_eq!(format_duration(Duration::from_millis(999)), "0s");
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(secs in any::<u64>()) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse_duration(F, &format_duration(d))?, d);
        }

        #[test]
        fn small_durations_too(secs in 0u64..400_000) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse_duration(F, &format_duration(d))?, d);
        }

        #[test]
        fn units_add_up(w in 0u64..100, d in 0u64..100, h in 0u64..100, m in 0u64..100, s in 0u64..100) {
            let text = format!("{w}w{d}d{h}h{m}m{s}s");
            let want = (((w * 7 + d) * 24 + h) * 60 + m) * 60 + s;
            prop_assert_eq!(parse_duration(F, &text)?, Duration::from_secs(want));
        }

        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = parse_duration(F, &s);
        }
    }
}
