//! Ranking offers and falling back to the next one.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::tests::{any_req, auto, cpu_offer};
use super::*;
use crate::api::resources::{CpuSpec, Range};

#[test]
fn ranking_is_cheapest_first_with_deterministic_ties_and_bounded() {
    let mut offers = vec![
        cpu_offer("c", 3.0),
        cpu_offer("b", 1.0),
        Offer { backend: "gcp".into(), ..cpu_offer("a", 1.0) },
        Offer { spot: true, ..cpu_offer("a", 1.0) },
        cpu_offer("a", 1.0),
        Offer { region: "eu-west-1".into(), ..cpu_offer("z", 1.0) },
        Offer { cpu: 1, ..cpu_offer("too-small", 0.1) },
        cpu_offer("d", 2.0),
    ];
    let req = Requirements { cpu: CpuSpec { arch: None, count: Range::at_least(2) }, ..any_req() };
    let names = |v: &[Offer]| {
        v.iter().map(|o| format!("{}/{}/{}/{}", o.backend, o.region, o.instance_type, o.spot)).collect::<Vec<_>>()
    };
    let expected = [
        "aws/eu-west-1/z/false",
        "aws/us-east-1/a/false",
        "aws/us-east-1/a/true",
        "aws/us-east-1/b/false",
        "gcp/us-east-1/a/false",
        "aws/us-east-1/d/false",
        "aws/us-east-1/c/false",
    ];
    assert_eq!(names(&rank_offers(&offers, &req, &auto(), 100)), expected);
    assert_eq!(names(&rank_offers(&offers, &req, &auto(), 3)), expected[..3]);
    assert!(rank_offers(&offers, &req, &auto(), 0).is_empty());
    offers.reverse();
    assert_eq!(names(&rank_offers(&offers, &req, &auto(), 100)), expected, "input order does not matter");
    let cheap = EffectivePolicy { max_price: Some(1.0), spot_policy: SpotPolicy::OnDemand, ..auto() };
    assert_eq!(rank_offers(&offers, &req, &cheap, 100).len(), 4);
}

pub(crate) fn attempt(offer: Offer) -> ProvisioningAttempt {
    ProvisioningAttempt {
        offer,
        error: "InsufficientCapacity".into(),
        message: "no capacity".into(),
        at: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

#[test]
fn next_offer_falls_back_in_ranking_order() {
    let ranked = vec![cpu_offer("a", 1.0), cpu_offer("b", 2.0), cpu_offer("c", 3.0)];
    assert_eq!(next_offer(&ranked, &[]).unwrap().instance_type, "a");
    let tried = vec![attempt(ranked[0].clone())];
    assert_eq!(next_offer(&ranked, &tried).unwrap().instance_type, "b");
    // Tried out of order (the cheapest was added later): still the cheapest untried.
    let tried = vec![attempt(ranked[1].clone())];
    assert_eq!(next_offer(&ranked, &tried).unwrap().instance_type, "a");
    // The price moved since the attempt: still the same offer.
    let tried = vec![attempt(Offer { price: 0.5, ..ranked[0].clone() }), attempt(ranked[1].clone())];
    assert_eq!(next_offer(&ranked, &tried).unwrap().instance_type, "c");
    let all: Vec<_> = ranked.iter().cloned().map(attempt).collect();
    assert_eq!(next_offer(&ranked, &all), None);
}

#[test]
fn same_offer_compares_identity_not_price() {
    let a = cpu_offer("a", 1.0);
    assert!(same_offer(&a, &Offer { price: 9.0, cpu: 64, ..a.clone() }));
    assert!(!same_offer(&a, &Offer { spot: true, ..a.clone() }));
    assert!(!same_offer(&a, &Offer { region: "eu-west-1".into(), ..a.clone() }));
    assert!(!same_offer(&a, &Offer { backend: "gcp".into(), ..a.clone() }));
    assert!(!same_offer(&a, &cpu_offer("b", 1.0)));
}
