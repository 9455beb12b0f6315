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

/// A at 0 (boots until 180, ends at 780), B at 800, C at 810, 600 s each. Both would
/// like A's machine (idle 20 s and 30 s), but it can serve one of them: A's boot, B after
/// 20 s idle, C's boot.
#[test]
fn the_bound_lets_each_machine_end_serve_one_later_run() {
    let trace = parse_trace("arrival,duration,gpu\n0,600,A100:1\n800,600,A100:1\n810,600,A100:1\n").unwrap();
    let b = offline_bound(&trace, &config());
    assert!((b.total_cost - cost_of(180.0 + 600.0 + 20.0 + 600.0 + 180.0 + 600.0)).abs() < 1e-9, "{}", b.total_cost);
    assert!((b.idle_cost - cost_of(20.0)).abs() < 1e-9);
    assert_eq!((b.launched, b.reused), (2, 1));
    // The clairvoyant schedule does exactly that (keeping A 1 ms past B's arrival).
    let c = simulate(&trace, &config(), &Policy::Clairvoyant);
    assert!((c.total_cost - b.total_cost).abs() < cost_of(0.0011), "{} vs {}", c.total_cost, b.total_cost);
}

/// A at 0 waits for its boot, so ends at 780, not 600: B at 800 finds the machine idle
/// for 20 s, and B at 650 finds no machine at all. The bound follows both: the
/// clairvoyant schedule pays it (to the millisecond it keeps A past B's arrival).
#[test]
fn the_bound_knows_a_run_that_waited_for_its_boot_ends_one_boot_later() {
    for (second, seconds) in [(800.0, 180.0 + 600.0 + 20.0 + 600.0), (650.0, 2.0 * (180.0 + 600.0))] {
        let trace = two_runs(second);
        let b = offline_bound(&trace, &config());
        assert!(
            (b.total_cost - cost_of(seconds)).abs() < 1e-9,
            "B at {second}: {} vs {}",
            b.total_cost,
            cost_of(seconds)
        );
        let c = simulate(&trace, &config(), &Policy::Clairvoyant);
        assert!(
            (c.total_cost - b.total_cost).abs() < cost_of(0.0011),
            "B at {second}: {} vs {}",
            c.total_cost,
            b.total_cost
        );
    }
}

/// A (0, 70 s) and B (10, 50 s) boot; B's machine is idle from 240, A's from 250. C
/// arrives at 300 (200 s), D at 400 (100 s). The cheapest schedule keeps B's machine for
/// C (60 s) and A's for D (150 s): 990 machine-seconds, two launches. The clairvoyant
/// keeps each for that run, and each must take the one kept for it: were C to take A's
/// machine (the first by name), B's would idle 60 s for nothing and D would boot a third
/// (1,070 machine-seconds).
#[test]
fn the_clairvoyant_run_takes_the_machine_kept_for_it() {
    let trace =
        parse_trace("arrival,duration,gpu\n0,70,A100:1\n10,50,A100:1\n300,200,A100:1\n400,100,A100:1\n").unwrap();
    let b = offline_bound(&trace, &config());
    assert!((b.total_cost - cost_of(990.0)).abs() < 1e-9, "{}", b.total_cost);
    let c = simulate(&trace, &config(), &Policy::Clairvoyant);
    assert_eq!((c.launched, c.reused), (2, 2));
    assert!((c.total_cost - cost_of(990.0)).abs() < 1e-9, "{} vs {}", c.total_cost, cost_of(990.0));
    assert!((c.idle_cost - cost_of(210.0)).abs() < 1e-9, "{}", c.idle_cost);
}

/// Random traces of up to 7 runs. With its prices at 0 the bound is exactly the cheapest
/// assignment of ends (each run's, at `e` or `e + b`) to starts, by brute force over all
/// of them (mixed prices too). Priced, it stays at or below the cheapest schedule (brute
/// force over chains where a run that launches a machine starts one boot late), which is
/// at or below every simulated policy, and it reaches that optimum more often.
#[test]
fn the_bound_is_the_optimum_assignment_and_below_every_schedule() {
    use super::bound::assignment_cost;
    // Cheapest assignment: start `k` (in arrival order) boots or takes an unused end.
    fn best_assignment(runs: &[(i64, i64, i64)], b: i64, rate: i64, k: usize, used: &mut Vec<bool>) -> i64 {
        if k == runs.len() {
            return 0;
        }
        let (a, _, p) = runs[k];
        let mut best = p * b + best_assignment(runs, b, rate, k + 1, used);
        for i in 0..runs.len() {
            let e = runs[i].0 + runs[i].1;
            let gap = if a >= e + b { a - e - b } else { a - e };
            if !used[i] && gap >= 0 {
                used[i] = true;
                best = best.min(rate * gap + best_assignment(runs, b, rate, k + 1, used));
                used[i] = false;
            }
        }
        best
    }
    // Cheapest schedule (machine-ms): machines free at `free` times; run `k` launches
    // one (boot, then ends at a + d + b) or takes one free by its arrival.
    fn best_schedule(runs: &[(i64, i64, i64)], b: i64, k: usize, free: &mut Vec<i64>) -> i64 {
        if k == runs.len() {
            return 0;
        }
        let (a, d, _) = runs[k];
        free.push(a + d + b);
        let mut best = b + d + best_schedule(runs, b, k + 1, free);
        free.pop();
        for m in 0..free.len() {
            let e = free[m];
            if e <= a {
                free[m] = a + d;
                best = best.min(a - e + d + best_schedule(runs, b, k + 1, free));
                free[m] = e;
            }
        }
        best
    }
    let mut rng = families::Rng::new(15);
    let boot = 180_000;
    let (mut tight, mut plain_tight) = (0, 0);
    for case in 0..400 {
        let n = 2 + (rng.next_u64() % 6) as usize;
        let mut runs: Vec<(i64, i64, i64)> = (0..n)
            .map(|_| {
                let a = (rng.range(0.0, 1500.0) as i64) * 1000;
                let d = (1.0 + rng.range(0.0, 600.0)) as i64 * 1000;
                let p = if case % 2 == 0 {
                    4_100_000
                } else {
                    [1_000_000, 2_000_000, 3_000_000][rng.next_u64() as usize % 3]
                };
                (a, d, p)
            })
            .collect();
        runs.sort_by_key(|r| r.0);
        let rate = runs.iter().map(|r| r.2).min().unwrap();
        let secs: Vec<(f64, f64, f64)> =
            runs.iter().map(|&(a, d, p)| (a as f64 / 1000.0, d as f64 / 1000.0, p as f64 / 1e6)).collect();
        let (plain, _) = assignment_cost(&secs, 180.0, 1);
        assert_eq!(plain, best_assignment(&runs, boot, rate, 0, &mut vec![false; n]), "case {case}: {runs:?}");
        let (cost, _) = assignment_cost(&secs, 180.0, super::bound::ROUNDS);
        assert!(cost >= plain, "case {case}: the priced rounds only raise the bound");
        if case % 2 == 0 {
            let busy: i64 = runs.iter().map(|r| r.1).sum();
            let schedule = best_schedule(&runs, boot, 0, &mut Vec::new()) - busy;
            assert!(cost <= rate * schedule, "case {case}: bound {cost} above the best schedule {schedule}: {runs:?}");
            tight += usize::from(cost == rate * schedule);
            plain_tight += usize::from(plain == rate * schedule);
            let csv: String = secs.iter().map(|(a, d, _)| format!("{a},{d},A100:1\n")).collect();
            let trace = parse_trace(&format!("arrival,duration,gpu\n{csv}")).unwrap();
            let best = cost_of((schedule + busy) as f64 / 1000.0);
            for policy in Policy::all() {
                let r = simulate(&trace, &config(), &policy);
                assert!(
                    r.total_cost >= best - 1e-9,
                    "case {case}: {} {} below the best schedule {best}",
                    r.policy,
                    r.total_cost
                );
            }
        }
    }
    eprintln!("bound equal to the best schedule: {tight}/200 priced, {plain_tight}/200 plain");
    assert!(tight > plain_tight, "{tight} vs {plain_tight}");
}

/// Auto's account against 5 minutes, by hand. Nothing learned yet: auto keeps A's
/// machine one boot (180 s) from 780 and ends it at 960, before 5 minutes; B's launch
/// settles that spell. B at 1000 (gap 220 s): 5 minutes would have kept the machine for B
/// (220 s idle, no boot) where auto idled 180 s and B booted a machine (180 s): −140 s.
/// B at 1200 (gap 420 s): 5 minutes would have idled 300 s, auto 180 s: +120 s. The last
/// spell (B's machine, ended at 180 s) waits for a launch that never comes and is left
/// out; there 5 minutes would have idled 300 s, so the measured difference is the
/// account plus 120 s.
#[test]
fn auto_spells_ended_before_five_minutes_are_settled_at_the_next_launch() {
    for (second, account) in [(1000.0, -140.0), (1200.0, 120.0)] {
        let trace = two_runs(second);
        let auto = simulate(&trace, &config(), &by_name("auto"));
        let five = simulate(&trace, &config(), &by_name("fixed-5m"));
        assert!((auto.saved_vs_5m - cost_of(account)).abs() < 1e-9, "B at {second}: {}", auto.saved_vs_5m);
        assert_eq!((auto.settled_later_vs_5m, auto.unsettled_vs_5m), (1, 1), "B at {second}");
        let measured = five.total_cost - auto.total_cost;
        assert!((measured - cost_of(account + 120.0)).abs() < 1e-9, "B at {second}: measured {measured}");
    }
}
