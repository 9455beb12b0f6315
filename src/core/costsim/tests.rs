use std::time::Duration;

use super::families::{generate, Family};
use super::*;

const A100: f64 = 4.10;

fn config() -> Config {
    Config { boot: Duration::from_secs(180), ..Config::default() }
}

/// Two A100 runs of 10 minutes: the second arrives at `second`.
fn two_runs(second: f64) -> Vec<TraceRun> {
    parse_trace(&format!("arrival,duration,gpu\n0,600,A100:1\n{second},600,A100:1\n")).unwrap()
}

fn cost_of(machine_seconds: f64) -> f64 {
    machine_seconds * A100 / 3600.0
}

fn by_name(policy: &str) -> Policy {
    Policy::all().into_iter().find(|p| p.name() == policy).unwrap()
}

/// Run A: 0 → boots until 180, runs until 780. Run B arrives at 1200 (a gap of 420 s,
/// longer than the 180 s boot). Each policy's machine-seconds, by hand.
#[test]
fn two_runs_one_long_gap_cost_exactly_what_each_policy_says() {
    let trace = two_runs(1200.0);
    // (policy, machine-seconds, idle seconds, launched, waits); the last machine also
    // idles until its deadline.
    let cases: [(&str, f64, f64, usize, [f64; 2]); 9] = [
        ("no-reuse", 780.0 + 780.0, 0.0, 2, [180.0, 180.0]),
        ("fixed-1m", 840.0 + 840.0, 120.0, 2, [180.0, 180.0]),
        ("fixed-5m", 1080.0 + 1080.0, 600.0, 2, [180.0, 180.0]),
        // Reused at 1200, runs until 1800, idle 30 minutes more.
        ("fixed-30m", 3600.0, 420.0 + 1800.0, 1, [180.0, 0.0]),
        ("fixed-72h", 1800.0 + 72.0 * 3600.0, 420.0 + 72.0 * 3600.0, 1, [180.0, 0.0]),
        // Billed until the last run ends.
        ("keep-forever", 1800.0, 420.0, 1, [180.0, 0.0]),
        // Idle one boot (180 s), then a new boot for B.
        ("ski-rental", 960.0 + 960.0, 360.0, 2, [180.0, 180.0]),
        // Nothing learned yet: ski-rental's deadline.
        ("auto", 960.0 + 960.0, 360.0, 2, [180.0, 180.0]),
        // Knows B comes more than a boot later: tears down at once.
        ("clairvoyant", 780.0 + 780.0, 0.0, 2, [180.0, 180.0]),
    ];
    for (policy, seconds, idle, launched, waits) in cases {
        let r = simulate(&trace, &config(), &by_name(policy));
        assert!((r.total_cost - cost_of(seconds)).abs() < 1e-9, "{policy}: {} vs {}", r.total_cost, cost_of(seconds));
        assert!((r.idle_cost - cost_of(idle)).abs() < 1e-9, "{policy}: idle {} vs {}", r.idle_cost, cost_of(idle));
        assert_eq!(r.launched, launched, "{policy}");
        assert_eq!(r.waits, waits.to_vec(), "{policy}");
        assert_eq!(r.reused, 2 - launched, "{policy}");
        let last = r.timeline.last().unwrap();
        assert!((last.cost - r.total_cost).abs() < 1e-9, "{policy}: the timeline ends at the total");
    }
    // The bound: the gap (420 s) is longer than a boot, so two boots.
    let b = offline_bound(&trace, &config());
    assert!((b.total_cost - cost_of(1560.0)).abs() < 1e-9);
    assert_eq!((b.launched, b.reused), (2, 0));
}

/// B arrives at 850: a gap of 70 s, shorter than a boot. Idling through it is what the
/// planner does, and what every policy keeping at least 70 s does.
#[test]
fn two_runs_one_short_gap() {
    let trace = two_runs(850.0);
    let b = offline_bound(&trace, &config());
    // A: 180 boot + 600; B: 70 idle + 600.
    assert!((b.total_cost - cost_of(1450.0)).abs() < 1e-9);
    assert!((b.idle_cost - cost_of(70.0)).abs() < 1e-9);
    // Clairvoyant keeps A's machine until 1 ms past B's arrival, and nothing after B.
    for (policy, seconds) in [
        ("no-reuse", 1560.0),
        ("fixed-1m", 840.0 + 840.0),
        ("ski-rental", 1450.0 + 180.0),
        ("keep-forever", 1450.0),
        ("clairvoyant", 1450.0),
    ] {
        let r = simulate(&trace, &config(), &by_name(policy));
        assert!((r.total_cost - cost_of(seconds)).abs() < 1e-9, "{policy}: {} vs {}", r.total_cost, cost_of(seconds));
    }
}

#[test]
fn higher_priority_takes_the_idle_instance_first() {
    let trace =
        parse_trace("arrival,duration,gpu,priority\n0,600,A100:1,0\n900,600,A100:1,0\n900,600,A100:1,10\n").unwrap();
    let r = simulate(&trace, &config(), &Policy::KeepForever);
    // Sorted by arrival, stable: the low-priority run of 900 is second, the other third.
    assert_eq!(r.waits, vec![180.0, 180.0, 0.0]);
}

#[test]
fn csv_and_json_lines_read_alike_and_errors_name_line_and_field() {
    let csv = "arrival,duration,cpu,memory,gpu,pool,priority\n900,1200,8..,32GB..,,default,10\n0,600,,,\"A100,H100:1\",train,\n";
    let json = "{\"arrival\": 0, \"duration\": 600, \"resources\": {\"gpu\": \"A100,H100:1\"}, \"pool\": \"train\"}\n\n{\"arrival\": 900, \"duration\": 1200, \"resources\": {\"cpu\": \"8..\", \"memory\": \"32GB..\"}, \"priority\": 10}\n";
    let a = parse_trace(csv).unwrap();
    assert_eq!(a, parse_trace(json).unwrap());
    assert_eq!(a[0].pool, "train");
    assert_eq!(a[1].priority, 10);
    assert_eq!(a[1].pool, "default");
    let e = parse_trace("arrival,duration,gpu\n0,600,A100\n5,0,A100\n").unwrap_err();
    assert_eq!((e.line, e.field.as_str(), e.value.as_str()), (3, "duration", "0"));
    let e = parse_trace("arrival,duration,gpu\n0,600,A100:lots\n").unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (2, "resources.gpu"));
    let e = parse_trace("arrival,duration,colour\n").unwrap_err();
    assert_eq!((e.field.as_str(), e.value.as_str()), ("header", "colour"));
    let e = parse_trace("{\"arrival\": 1}\n").unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (1, "line"));
}

/// On every family: no policy beats the bound, every run waits 0 or one boot, and the
/// same seed gives the same figures.
#[test]
fn families_are_deterministic_and_the_bound_holds() {
    let config = config();
    for family in Family::ALL {
        let trace = generate(family, 7, 2.0).unwrap();
        assert!(trace.len() > 50, "{family}: {} runs", trace.len());
        assert_eq!(trace, generate(family, 7, 2.0).unwrap());
        assert_ne!(trace, generate(family, 8, 2.0).unwrap());
        let bound = offline_bound(&trace, &config);
        assert_eq!(bound.unplaceable, 0);
        for policy in Policy::all() {
            let r = simulate(&trace, &config, &policy);
            assert_eq!(r.runs, trace.len(), "{family} {}", r.policy);
            assert!(
                r.total_cost >= bound.total_cost - 1e-9,
                "{family} {}: {} below the bound {}",
                r.policy,
                r.total_cost,
                bound.total_cost
            );
            assert!(r.waits.iter().all(|&w| w == 0.0 || w == 180.0), "{family} {}", r.policy);
            if policy == Policy::Auto {
                assert_eq!(r, simulate(&trace, &config, &policy));
            }
        }
    }
}

#[test]
fn batch_sweeps_arrive_together_then_nothing_for_hours() {
    let trace = generate(Family::Batch, 3, 3.0).unwrap();
    let gaps: Vec<f64> = trace.windows(2).map(|w| w[1].arrival - w[0].arrival).collect();
    assert!(gaps.iter().all(|&g| g <= 60.0 || g >= 5.0 * 3600.0), "{gaps:?}");
    assert!(gaps.iter().filter(|&&g| g >= 5.0 * 3600.0).count() >= 5);
}

#[test]
fn quantiles_by_nearest_rank() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(quantile(&v, 0.5), 50.0);
    assert_eq!(quantile(&v, 0.99), 99.0);
    assert_eq!(quantile(&[], 0.5), 0.0);
}

/// Sweeps of 12 and of 4 runs, 6 hours apart: every instance that expired after a sweep
/// learns its gap at the next sweep's first launch, also the ones that no run of a
/// smaller sweep replaces, so the 2× guard earns its slack back and auto learns to tear
/// instances down at once.
#[test]
fn auto_learns_to_tear_down_between_sweeps() {
    let mut csv = String::from("arrival,duration,gpu\n");
    for sweep in 0..16 {
        let size = if sweep % 2 == 0 { 12 } else { 4 };
        for k in 0..size {
            csv.push_str(&format!("{},{},A100:1\n", sweep * 6 * 3600, 600 + 60 * k));
        }
    }
    let trace = parse_trace(&csv).unwrap();
    let ski = simulate(&trace, &config(), &Policy::SkiRental);
    let auto = simulate(&trace, &config(), &Policy::Auto);
    let none = simulate(&trace, &config(), &Policy::NoReuse);
    let ratio = auto.total_cost / ski.total_cost;
    assert!(ratio < 0.92, "auto {} vs ski-rental {} ({ratio:.3})", auto.total_cost, ski.total_cost);
    assert!(auto.total_cost >= none.total_cost, "nothing beats no-reuse here");
}
