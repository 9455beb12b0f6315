use proptest::prelude::*;

use super::*;
use crate::api::policy::SpotPolicy;
use crate::api::resources::{CpuSpec, GpuSpec, Range};
use crate::core::offers::offer_fits;
use crate::core::offers::proptests::{arb_offer, arb_policy, arb_requirements};
use crate::core::offers::tests::{any_req, auto, cpu_offer};

fn inst(name: &str, price: f64) -> IdleInstance {
    IdleInstance {
        name: name.into(),
        namespace: "ml".into(),
        pool: "default".into(),
        offer: cpu_offer("m5.2xlarge", price),
        reserved_for: None,
    }
}

fn run(name: &str) -> PendingRun {
    PendingRun {
        name: name.into(),
        namespace: "ml".into(),
        pool: "default".into(),
        requirements: any_req(),
        policy: auto(),
        pinned_instance: None,
    }
}

fn names(idle: &[IdleInstance], pick: Option<usize>) -> Option<&str> {
    pick.map(|i| idle[i].name.as_str())
}

#[test]
fn only_the_same_namespace_and_pool() {
    let idle = vec![
        IdleInstance { namespace: "other".into(), ..inst("a", 1.0) },
        IdleInstance { pool: "other".into(), ..inst("b", 1.0) },
        inst("c", 5.0),
    ];
    assert_eq!(names(&idle, pick_instance(&run("r"), &idle)), Some("c"));
    assert_eq!(pick_instance(&PendingRun { pool: "nope".into(), ..run("r") }, &idle), None);
}

#[test]
fn cheapest_fitting_wins_ties_by_name() {
    let gpu = IdleInstance {
        offer: Offer { gpu_count: 1, gpu_name: Some("A100".into()), gpu_memory: 80.0, ..cpu_offer("p4d", 4.0) },
        ..inst("gpu", 4.0)
    };
    let idle = vec![inst("b", 2.0), inst("a", 2.0), inst("c", 1.0), gpu];
    assert_eq!(names(&idle, pick_instance(&run("r"), &idle)), Some("c"));
    let idle2 = idle[..2].to_vec();
    assert_eq!(names(&idle2, pick_instance(&run("r"), &idle2)), Some("a"), "equal price: by name");
    let wants_gpu = PendingRun {
        requirements: Requirements {
            gpu: Some(GpuSpec {
                vendor: None,
                names: vec!["a100".into()],
                count: Range::at_least(1),
                memory: None,
                total_memory: None,
                compute_capability: None,
            }),
            ..any_req()
        },
        ..run("r")
    };
    assert_eq!(names(&idle, pick_instance(&wants_gpu, &idle)), Some("gpu"));
}

#[test]
fn the_policy_must_fit_too() {
    let idle = vec![
        IdleInstance { offer: Offer { spot: true, ..cpu_offer("m", 0.5) }, ..inst("spot", 0.5) },
        inst("pricey", 9.0),
        inst("ok", 2.0),
    ];
    let on_demand = PendingRun {
        policy: EffectivePolicy { spot_policy: SpotPolicy::OnDemand, max_price: Some(5.0), ..auto() },
        ..run("r")
    };
    assert_eq!(names(&idle, pick_instance(&on_demand, &idle)), Some("ok"));
    let elsewhere = PendingRun { policy: EffectivePolicy { regions: vec!["eu-west-1".into()], ..auto() }, ..run("r") };
    assert_eq!(pick_instance(&elsewhere, &idle), None);
    let big = PendingRun {
        requirements: Requirements { cpu: CpuSpec { arch: None, count: Range::at_least(64) }, ..any_req() },
        ..run("r")
    };
    assert_eq!(pick_instance(&big, &idle), None);
}

#[test]
fn reserved_instances_go_only_to_their_run() {
    let idle = vec![IdleInstance { reserved_for: Some("owner".into()), ..inst("held", 1.0) }, inst("free", 3.0)];
    assert_eq!(names(&idle, pick_instance(&run("other"), &idle)), Some("free"));
    assert_eq!(names(&idle, pick_instance(&run("owner"), &idle)), Some("held"));
    let owner_elsewhere = PendingRun { namespace: "other".into(), ..run("owner") };
    assert_eq!(pick_instance(&owner_elsewhere, &idle), None, "same name, other namespace");
}

#[test]
fn a_pinned_run_takes_that_instance_or_nothing() {
    let idle = vec![
        inst("cheap", 1.0),
        inst("pinned", 3.0),
        IdleInstance { reserved_for: Some("someone".into()), ..inst("held", 1.0) },
        IdleInstance { pool: "other".into(), ..inst("away", 1.0) },
    ];
    let pinned = |pin: &str| PendingRun { pinned_instance: Some(pin.into()), ..run("r") };
    assert_eq!(names(&idle, pick_instance(&pinned("pinned"), &idle)), Some("pinned"));
    assert_eq!(pick_instance(&pinned("missing"), &idle), None);
    assert_eq!(pick_instance(&pinned("held"), &idle), None, "reserved for another run");
    assert_eq!(pick_instance(&pinned("away"), &idle), None, "another pool");
    let too_cheap = PendingRun { policy: EffectivePolicy { max_price: Some(2.0), ..auto() }, ..pinned("pinned") };
    assert_eq!(pick_instance(&too_cheap, &idle), None, "a pinned instance must still fit");
    // Taken by an earlier run: the pinned run gets nothing, not another instance.
    let runs = vec![pinned("pinned"), pinned("pinned")];
    assert_eq!(assign(&runs, &idle), vec![(0, 1)]);
}

#[test]
fn assign_serves_runs_oldest_first_and_each_instance_once() {
    let idle = vec![inst("b", 2.0), inst("a", 1.0), inst("c", 3.0)];
    let big = PendingRun { requirements: Requirements { memory: Range::at_least(1000.0), ..any_req() }, ..run("big") };
    let runs = vec![run("r0"), big, run("r2"), run("r3"), run("r4")];
    let expected = vec![(0, 1), (2, 0), (3, 2)];
    assert_eq!(assign(&runs, &idle), expected);
    assert_eq!(assign_naive(&runs, &idle), expected);
    assert!(assign(&[], &idle).is_empty());
    assert!(assign(&runs, &[]).is_empty());
}

#[test]
fn assign_prefers_a_cheaper_reserved_instance_and_leaves_it_otherwise() {
    let idle = vec![
        IdleInstance { reserved_for: Some("r1".into()), ..inst("mine", 1.0) },
        inst("shared", 2.0),
        IdleInstance { reserved_for: Some("r1".into()), ..inst("mine-pricey", 5.0) },
    ];
    let runs = vec![run("r0"), run("r1"), run("r2")];
    // r0 cannot take r1's instances; r1 takes its cheaper reserved one; r2 gets nothing.
    assert_eq!(assign(&runs, &idle), vec![(0, 1), (1, 0)]);
    assert_eq!(assign_naive(&runs, &idle), vec![(0, 1), (1, 0)]);
}

prop_compose! {
    fn arb_instance()(
        name in prop::sample::select(vec!["i0", "i1", "i2", "i3", "i4", "i5"]),
        namespace in prop::sample::select(vec!["a", "b"]),
        pool in prop::sample::select(vec!["p", "q"]),
        offer in arb_offer(),
        reserved_for in prop::option::weighted(0.2, prop::sample::select(vec!["r0", "r1", "r2"])),
    ) -> IdleInstance {
        IdleInstance {
            name: name.into(),
            namespace: namespace.into(),
            pool: pool.into(),
            offer,
            reserved_for: reserved_for.map(String::from),
        }
    }
}

prop_compose! {
    fn arb_run()(
        name in prop::sample::select(vec!["r0", "r1", "r2", "r3", "r4"]),
        namespace in prop::sample::select(vec!["a", "b"]),
        pool in prop::sample::select(vec!["p", "q"]),
        requirements in prop_oneof![Just(any_req()), arb_requirements()],
        policy in prop_oneof![Just(auto()), arb_policy()],
        pinned_instance in prop::option::weighted(0.15, prop::sample::select(vec!["i0", "i1", "i2"])),
    ) -> PendingRun {
        PendingRun {
            name: name.into(),
            namespace: namespace.into(),
            pool: pool.into(),
            requirements,
            policy,
            pinned_instance: pinned_instance.map(String::from),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn assign_is_a_valid_matching_equal_to_the_naive_one(
        runs in prop::collection::vec(arb_run(), 0..40),
        idle in prop::collection::vec(arb_instance(), 0..40),
    ) {
        let pairs = assign(&runs, &idle);
        prop_assert_eq!(&pairs, &assign_naive(&runs, &idle));
        let mut run_seen = vec![false; runs.len()];
        let mut inst_seen = vec![false; idle.len()];
        for &(r, i) in &pairs {
            prop_assert!(!run_seen[r], "run {} assigned twice", r);
            prop_assert!(!inst_seen[i], "instance {} assigned twice", i);
            run_seen[r] = true;
            inst_seen[i] = true;
            let (run, inst) = (&runs[r], &idle[i]);
            prop_assert_eq!(&run.namespace, &inst.namespace);
            prop_assert_eq!(&run.pool, &inst.pool);
            prop_assert!(offer_fits(&run.requirements, &run.policy, &inst.offer));
            prop_assert!(inst.reserved_for.as_ref().is_none_or(|o| *o == run.name));
            prop_assert!(run.pinned_instance.as_ref().is_none_or(|p| *p == inst.name));
        }
        prop_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0), "in run order");
        // The first run always gets exactly what pick_instance gives it.
        if let Some(first) = runs.first() {
            let expected = pick_instance(first, &idle).map(|i| (0, i));
            prop_assert_eq!(pairs.first().copied().filter(|p| p.0 == 0), expected);
        }
    }
}
