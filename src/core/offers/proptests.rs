//! Property tests of offer matching and ranking, and the generators that the matching
//! tests reuse.

use proptest::prelude::*;

use super::ranking_tests::attempt;
use super::tests::{any_req, auto};
use super::*;
use crate::api::resources::{CpuSpec, Range};
use crate::core::policy::Origin;

prop_compose! {
    /// Offers from small domains, so that ties and near-misses are common.
    pub(crate) fn arb_offer()(
        backend in prop::sample::select(vec!["aws", "gcp", "lambda"]),
        region in prop::sample::select(vec!["us-east-1", "eu-west-1"]),
        instance_type in prop::sample::select(vec!["a", "b", "c", "d"]),
        cpu in prop::sample::select(vec![2u32, 4, 8, 16]),
        memory in prop::sample::select(vec![8.0, 16.0, 64.0]),
        disk in prop::option::of(prop::sample::select(vec![50.0, 100.0, 500.0])),
        gpu in prop::option::of((
            prop::sample::select(vec!["A100", "a10", "T4", "H100", "MI300X", "Mystery9"]),
            1u32..=4,
            prop::sample::select(vec![24.0, 40.0, 80.0]),
            prop::option::of(prop::sample::select(vec!["7.5", "8.0", "9.0"])),
        )),
        spot: bool,
        price_cents in 0u32..40,
    ) -> Offer {
        let mut offer = Offer {
            backend: backend.into(),
            region: region.into(),
            instance_type: instance_type.into(),
            cpu,
            memory,
            disk,
            spot,
            price: f64::from(price_cents) / 4.0,
            ..Offer::default()
        };
        if let Some((name, count, memory, cc)) = gpu {
            offer.gpu_name = Some(name.into());
            offer.gpu_count = count;
            offer.gpu_memory = memory;
            offer.compute_capability = cc.map(str::to_string);
        }
        offer
    }
}

fn arb_range_u32(values: Vec<u32>) -> impl Strategy<Value = Range<u32>> {
    let v = prop::sample::select(values);
    (prop::option::of(v.clone()), prop::option::of(v)).prop_map(|(a, b)| match (a, b) {
        (Some(a), Some(b)) => Range { min: Some(a.min(b)), max: Some(a.max(b)) },
        (min, max) => Range { min, max },
    })
}

fn arb_range_f64(values: Vec<f64>) -> impl Strategy<Value = Range<f64>> {
    let v = prop::sample::select(values);
    (prop::option::of(v.clone()), prop::option::of(v)).prop_map(|(a, b)| match (a, b) {
        (Some(a), Some(b)) => Range { min: Some(a.min(b)), max: Some(a.max(b)) },
        (min, max) => Range { min, max },
    })
}

/// Requirements over the same small domains as [`arb_offer`].
pub(crate) fn arb_requirements() -> impl Strategy<Value = Requirements> {
    let gpu = (
        prop::option::of(prop::sample::select(vec![GpuVendor::Nvidia, GpuVendor::Amd])),
        prop::sample::subsequence(vec!["a100", "A10", "h100", "MI300X"], 0..=2),
        arb_range_u32(vec![0, 1, 2, 4]),
        prop::option::of(arb_range_f64(vec![24.0, 40.0, 80.0])),
        prop::option::of(arb_range_f64(vec![40.0, 80.0, 160.0])),
        prop::option::of(prop::sample::select(vec![(7, 5), (8, 0), (9, 0)])),
    )
        .prop_map(|(vendor, names, count, memory, total_memory, compute_capability)| GpuSpec {
            vendor,
            names: names.into_iter().map(String::from).collect(),
            count,
            memory,
            total_memory,
            compute_capability,
        });
    (
        arb_range_u32(vec![2, 4, 8, 16]),
        arb_range_f64(vec![8.0, 16.0, 64.0]),
        prop::option::of(arb_range_f64(vec![50.0, 100.0, 500.0])),
        prop::option::of(gpu),
    )
        .prop_map(|(count, memory, disk, gpu)| Requirements {
            cpu: CpuSpec { arch: None, count },
            memory,
            disk,
            gpu,
        })
}

/// Policies over the same small domains as [`arb_offer`].
pub(crate) fn arb_policy() -> impl Strategy<Value = EffectivePolicy> {
    (
        prop::sample::select(vec![SpotPolicy::Spot, SpotPolicy::OnDemand, SpotPolicy::Auto]),
        prop::option::of(prop::sample::select(vec![1.0, 2.5, 5.0])),
        prop::sample::subsequence(vec!["aws", "gcp", "lambda"], 0..=2),
        prop::sample::subsequence(vec!["us-east-1", "eu-west-1"], 0..=1),
    )
        .prop_map(|(spot_policy, max_price, backends, regions)| EffectivePolicy {
            spot_policy,
            max_price,
            backends: backends.into_iter().map(String::from).collect(),
            regions: regions.into_iter().map(String::from).collect(),
            ..EffectivePolicy::defaults(Origin::Run)
        })
}

proptest! {
    #[test]
    fn rank_offers_is_a_bounded_sorted_filter(
        offers in prop::collection::vec(arb_offer(), 0..120),
        req in arb_requirements(),
        policy in arb_policy(),
        limit in 0usize..60,
    ) {
        let ranked = rank_offers(&offers, &req, &policy, limit);
        let mut naive: Vec<Offer> = offers.iter().filter(|o| offer_fits(&req, &policy, o)).cloned().collect();
        let fitting = naive.len();
        naive.sort_by(offer_order);
        naive.truncate(limit);
        prop_assert_eq!(ranked.len(), limit.min(fitting));
        prop_assert!(ranked.windows(2).all(|w| w[0].price <= w[1].price));
        prop_assert!(ranked.iter().all(|o| offer_fits(&req, &policy, o)));
        prop_assert_eq!(ranked, naive);
    }

    #[test]
    fn top_offers_from_a_reused_buffer_rank_as_rank_offers(
        offers in prop::collection::vec(arb_offer(), 0..120),
        req in arb_requirements(),
        policy in arb_policy(),
        limit in 0usize..60,
    ) {
        // As a catalog reader feeds it: every offer in turn through one buffer.
        let mut top = TopOffers::new(&req, &policy, limit);
        let mut buffer = Offer::default();
        for offer in &offers {
            buffer.clone_from(offer);
            top.push(&buffer, Offer::clone);
        }
        prop_assert_eq!(top.into_sorted(), rank_offers(&offers, &req, &policy, limit));
    }

    #[test]
    fn next_offer_is_the_first_untried(
        offers in prop::collection::vec(arb_offer(), 0..30),
        tried in prop::collection::vec(arb_offer(), 0..30),
    ) {
        let ranked = rank_offers(&offers, &any_req(), &auto(), usize::MAX);
        let attempts: Vec<_> = tried.into_iter().map(attempt).collect();
        match next_offer(&ranked, &attempts) {
            Some(next) => {
                prop_assert!(!attempts.iter().any(|a| same_offer(next, &a.offer)));
                let pos = ranked.iter().position(|o| std::ptr::eq(o, next)).unwrap();
                prop_assert!(ranked[..pos].iter().all(|o| attempts.iter().any(|a| same_offer(o, &a.offer))));
            }
            None => prop_assert!(ranked.iter().all(|o| attempts.iter().any(|a| same_offer(o, &a.offer)))),
        }
    }
}
