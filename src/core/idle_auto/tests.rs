use std::time::Duration;

use super::*;

const BOOT: Duration = Duration::from_secs(180);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn summary_of(gaps: &[f64]) -> GapSummary {
    let mut s = GapSummary::default();
    for &g in gaps {
        s.observe(secs(g));
    }
    s
}

#[test]
fn gaps_land_in_log_buckets_and_old_ones_fade() {
    let s = summary_of(&[0.2, 1.0, 1.5, 60.0, 1e9]);
    assert_eq!(s.counts.len(), BUCKETS);
    assert_eq!(s.counts[0], 1, "under a second");
    assert_eq!(s.counts[1], 1, "[1, 1.41)");
    assert_eq!(s.counts[2], 1, "[1.41, 2)");
    // 60 s: 2^5.5 = 45.25 <= 60 < 2^6 = 64.
    assert_eq!(s.counts[12], 1);
    assert_eq!(s.counts[BUCKETS - 1], 1, "longer than the last edge");
    assert_eq!(s.gaps(), 5);
    let mut s = summary_of(&[60.0; MAX_GAPS as usize]);
    assert_eq!(s.gaps(), MAX_GAPS);
    s.observe(secs(60.0));
    assert_eq!(MAX_GAPS, 400);
    assert_eq!(s.gaps(), 200, "401 gaps, halved once past the cap");
}

#[test]
fn too_few_gaps_keep_ski_rental() {
    let d = summary_of(&[30.0; (MIN_GAPS - 1) as usize]).decide(BOOT);
    assert_eq!(d.idle, BOOT);
    assert_eq!(d.reason, Reason::Learning);
    assert_eq!(d.risk, 0.0);
    assert!(d.explain(3.0).contains("7 gaps seen"), "{}", d.explain(3.0));
}

#[test]
fn short_or_very_long_gaps_give_a_deadline_just_past_the_short_ones() {
    // 30 s gaps, and 10 h nights: idle through the 30 s, not through a night.
    let mut gaps = vec![30.0; 30];
    gaps.extend([36_000.0; 10]);
    let s = summary_of(&gaps);
    let d = s.decide(BOOT);
    assert_eq!(d.reason, Reason::Learned);
    // 30 s is in bucket [22.6, 32): its representative is 26.9 s; the cheapest deadline
    // keeps every short gap and nothing longer, so it is the bucket's representative or
    // an edge above it, and below one boot.
    assert!(d.idle >= secs(26.0) && d.idle < BOOT, "{:?}", d.idle);
    assert_eq!(d.quantile, 0.75);
    // Per spell: ski-rental idles 180 s and reboots on each of the 10 long gaps (10 ×
    // 360 s + 30 × 26.9 s); auto idles T on the long ones.
    let t = d.idle.as_secs_f64();
    let rep = (edge(8) * edge(9)).sqrt();
    let expected = (30.0 * rep + 10.0 * 360.0) / 40.0 - (30.0 * rep + 10.0 * (t + 180.0)) / 40.0;
    assert!((d.expected_saving - expected).abs() < 1e-9, "{} vs {expected}", d.expected_saving);
    let text = d.explain(3.6);
    assert!(text.contains("75% of the last 40 gaps"), "{text}");
}

#[test]
fn regular_gaps_longer_than_a_boot_tear_down_at_once() {
    let s = summary_of(&[600.0; 20]);
    let d = s.decide(BOOT);
    assert_eq!(d.idle, Duration::ZERO);
    assert_eq!(d.quantile, 0.0);
    // Ski-rental: 180 idle + 180 boot; auto: 180 boot.
    assert!((d.expected_saving - 180.0).abs() < 1e-9);
    assert_eq!(d.risk, 180.0);
}

#[test]
fn regular_gaps_shorter_than_a_boot_are_idled_through() {
    let d = summary_of(&[100.0; 20]).decide(BOOT);
    assert!(d.idle >= secs(100.0), "{:?}", d.idle);
    assert_eq!(d.quantile, 1.0);
}

#[test]
fn without_slack_the_guard_keeps_the_deadline_near_one_boot() {
    let mut s = summary_of(&[600.0; 20]);
    // Auto already spent all it may: 2 × 1000 + 180 = 2180.
    s.bound_cost = 1000.0;
    s.auto_cost = 2180.0;
    let d = s.decide(BOOT);
    assert_eq!(d.reason, Reason::Guarded);
    assert_eq!(d.idle, BOOT);
    assert_eq!(d.risk, 0.0);
    assert!(d.explain(1.0).contains("2x guarantee"));
}

/// An adversary that knows each deadline sends the next run one second after it (the
/// worst gap for any deadline below a boot), or right at one boot when the deadline is
/// past it. Auto's true cost never exceeds twice the planner's plus one boot, at every
/// step, whatever it learned first.
#[test]
fn adversarial_gaps_never_cost_more_than_twice_the_planner_plus_one_boot() {
    for warmup in [5.0, 30.0, 600.0, 36_000.0] {
        let mut s = summary_of(&[warmup; 50]);
        let b = BOOT.as_secs_f64();
        let (mut auto, mut planner) = (0.0, 0.0);
        for _ in 0..500 {
            let d = s.decide(BOOT);
            s.open(&d);
            let t = d.idle.as_secs_f64();
            let gap = t + 1.0;
            // Expired after t, the next run pays a boot.
            auto += t + b;
            planner += gap.min(b);
            s.close_expired(&d, BOOT);
            s.gap_after_expiry(Some(d.idle), secs(gap), BOOT);
            assert!(auto <= 2.0 * planner + b + 1e-6, "warmup {warmup}: {auto} > 2 × {planner} + {b}");
            assert!(s.auto_cost <= 2.0 * s.bound_cost + b + 1e-6);
        }
        assert_eq!(s.reserved, 0.0);
    }
}

#[test]
fn reused_spells_count_their_gap_and_the_planners_share() {
    let mut s = GapSummary::default();
    let d = s.decide(BOOT);
    s.open(&d);
    s.close_reused(&d, secs(100.0), BOOT);
    s.open(&d);
    s.close_reused(&d, secs(170.0), BOOT);
    assert_eq!(s.auto_cost, 270.0);
    assert_eq!(s.bound_cost, 270.0);
    assert_eq!(s.gaps(), 2);
    let d = AutoDecision {
        idle: secs(60.0),
        reason: Reason::Learned,
        gaps: 9,
        quantile: 0.5,
        expected_saving: 1.0,
        risk: 120.0,
        context: None,
    };
    s.open(&d);
    assert_eq!(s.reserved, 120.0);
    s.close_expired(&d, BOOT);
    assert_eq!(s.reserved, 0.0);
    assert_eq!(s.auto_cost, 270.0 + 60.0 + 180.0);
    assert_eq!(s.bound_cost, 270.0 + 60.0);
}

/// The summary is kept in the pool's status: what a new controller reads back decides
/// exactly as the old one would have.
#[test]
fn the_summary_survives_a_restart() {
    let mut s = summary_of(&[30.0, 31.0, 29.0, 36_000.0, 30.0, 28.0, 33.0, 25.0, 36_000.0, 30.0]);
    s.auto_cost = 1234.5;
    s.bound_cost = 800.25;
    s.reserved = 42.0;
    let json = serde_json::to_string(&s).unwrap();
    let back: GapSummary = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.decide(BOOT), s.decide(BOOT));
    assert!(json.len() < 400, "compact: {} bytes", json.len());
    // An empty status reads as an empty summary.
    let empty: GapSummary = serde_json::from_str("{}").unwrap();
    assert_eq!(empty.decide(BOOT).idle, BOOT);
}

#[test]
fn a_gap_learned_after_expiry_gives_the_planner_its_true_share() {
    let mut s = GapSummary::default();
    let d = AutoDecision {
        idle: Duration::ZERO,
        reason: Reason::Learned,
        gaps: 9,
        quantile: 0.0,
        expected_saving: 0.0,
        risk: 180.0,
        context: None,
    };
    s.open(&d);
    s.close_expired(&d, BOOT);
    // Torn down at once: one boot spent, the planner counted at 0 until the gap is known.
    assert_eq!((s.auto_cost, s.bound_cost), (180.0, 0.0));
    s.gap_after_expiry(Some(d.idle), secs(3600.0), BOOT);
    // The next run came an hour later: the planner would have paid a boot too.
    assert_eq!((s.auto_cost, s.bound_cost), (180.0, 180.0));
    assert_eq!(s.gaps(), 1);
    // A gap seen after a fixed deadline only feeds the histogram.
    s.gap_after_expiry(None, secs(60.0), BOOT);
    assert_eq!((s.gaps(), s.bound_cost), (2, 180.0));
}

#[test]
fn settling_counts_the_known_gap_but_never_less_than_at_expiry() {
    let mut s = GapSummary::default();
    s.settle(secs(60.0), secs(100.0), BOOT);
    assert_eq!(s.bound_cost, 40.0, "min(100, 180) - min(60, 180)");
    s.settle(secs(60.0), secs(10_000.0), BOOT);
    assert_eq!(s.bound_cost, 40.0 + 120.0);
    // A gap shorter than the idle time cannot be: nothing changes.
    s.settle(secs(60.0), secs(30.0), BOOT);
    assert_eq!(s.bound_cost, 160.0);
    assert_eq!(s.gaps(), 0, "settling alone does not feed the histogram");
}

#[test]
fn a_spells_context_buckets_the_other_idle_instances_and_the_time_since_the_last_arrival() {
    let at = |idle_others, since: Option<f64>| SpellContext { idle_others, since_arrival: since.map(secs) }.key(BOOT);
    // Boot 180 s: under 45 s, under 180 s, longer (or no arrival seen).
    assert_eq!(at(0, Some(44.0)), "i0a0");
    assert_eq!(at(1, Some(45.0)), "i1a1");
    assert_eq!(at(3, Some(179.0)), "i2a1");
    assert_eq!(at(4, Some(180.0)), "i4a2");
    assert_eq!(at(40, None), "i4a2");
    assert_eq!(
        SpellContext::describe("i2a0"),
        "2-3 others idle, the last run arrived under a quarter of a boot before"
    );
}

/// One shape, two kinds of spell: those that start alone right after an arrival are
/// taken within 30 s; those that start with four others idle long after the last arrival
/// wait 10 h. The shape's histogram mixes them; each context decides from its own.
#[test]
fn a_context_with_enough_gaps_decides_from_its_own() {
    let busy = SpellContext { idle_others: 0, since_arrival: Some(secs(10.0)) };
    let quiet = SpellContext { idle_others: 5, since_arrival: Some(secs(3600.0)) };
    let mut g = spell::ShapeGaps::default();
    for _ in 0..20 {
        g.observe(secs(30.0), Some(&busy.key(BOOT)));
        g.observe(secs(36_000.0), Some(&quiet.key(BOOT)));
    }
    g.summary.bound_cost = 1e6; // Slack enough: the guard is not what this is about.
    let shape = g.summary.decide(BOOT);
    assert!(shape.idle >= secs(30.0), "the mix keeps past the short gaps: {:?}", shape.idle);
    let d = g.decide(&quiet, BOOT);
    assert_eq!((d.idle, d.context.as_deref(), d.gaps), (Duration::ZERO, Some("i4a2"), 20));
    assert!(
        d.explain(1.0).contains("i4a2: 4 or more others idle, no run arrived for a boot or more"),
        "{}",
        d.explain(1.0)
    );
    // Every gap of its own is short: anything past them costs the same, and the deadline
    // nearest one boot (least risk) is kept.
    let d = g.decide(&busy, BOOT);
    assert_eq!((d.idle, d.quantile), (BOOT, 1.0));
    assert_eq!(d.context.as_deref(), Some("i0a0"));
    // A context with too few gaps falls back on the shape's histogram.
    let rare = SpellContext { idle_others: 1, since_arrival: None };
    assert_eq!(g.decide(&rare, BOOT), AutoDecision { context: None, ..shape });
}

#[test]
fn context_histograms_are_trimmed_and_bounded() {
    let mut g = spell::ShapeGaps::default();
    g.observe(secs(30.0), Some("i0a0"));
    assert_eq!(g.contexts["i0a0"].len(), bucket_of(30.0) + 1, "no trailing empty buckets");
    for k in 0..MAX_CONTEXTS + 5 {
        g.observe(secs(30.0), Some(&format!("k{k}")));
    }
    assert_eq!(g.contexts.len(), MAX_CONTEXTS);
    assert_eq!(g.summary.gaps(), MAX_CONTEXTS as u32 + 6, "every gap still counts for the shape");
}

/// A pool status written before contexts (no `contexts`, records without `context`)
/// still reads, and decides as the shape's histogram did.
#[test]
fn a_status_from_before_contexts_still_reads() {
    let old = r#"{"summary": {"counts": [0,0,0,0,0,0,0,0,0,20], "autoCost": 10.0, "boundCost": 500.0},
        "expired": [{"since": "2026-01-01T00:00:00Z", "idleSeconds": 30, "bootSeconds": 180}]}"#;
    let g: spell::ShapeGaps = serde_json::from_str(old).unwrap();
    assert!(g.contexts.is_empty());
    assert_eq!(g.expired[0].context, None);
    let any = SpellContext { idle_others: 0, since_arrival: Some(secs(5.0)) };
    assert_eq!(g.decide(&any, BOOT), g.summary.decide(BOOT));
    assert_eq!(g.decide(&any, BOOT).context, None);
    let back: spell::ShapeGaps = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
    assert_eq!(back, g);
}
