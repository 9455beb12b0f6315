//! Leader election against the in-memory API: one leader at a time, renewals, takeover
//! after expiry, release, and a race where both replicas decide at the same moment.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kpool::controllers::leader::{Elector, LeaderConfig};
use kube::Api;
use kube_fake_client::ClientBuilder;

async fn pair() -> (Elector, Elector, Api<Lease>) {
    let client = ClientBuilder::new().with_resource::<Lease>().build().await.expect("fake client");
    let a = Elector::new(client.clone(), LeaderConfig::new("kpool-system", "replica-a"));
    let b = Elector::new(client.clone(), LeaderConfig::new("kpool-system", "replica-b"));
    (a, b, Api::namespaced(client, "kpool-system"))
}

fn at(secs: i64) -> Timestamp {
    "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_secs(secs)
}

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get("kpool-controller").await.unwrap().spec.unwrap().holder_identity
}

#[tokio::test]
async fn one_leader_renews_and_a_standby_takes_over_only_after_expiry() {
    let (a, b, api) = pair().await;
    assert!(a.try_lead(at(0)).await.unwrap());
    assert!(!b.try_lead(at(5)).await.unwrap(), "a's lease is live");
    assert!(a.try_lead(at(10)).await.unwrap(), "a renews");
    assert!(!b.try_lead(at(24)).await.unwrap(), "renewed at 10, held until 25");
    assert_eq!(holder(&api).await.as_deref(), Some("replica-a"));
    assert!(b.try_lead(at(26)).await.unwrap(), "a stopped renewing: b takes over");
    assert!(!a.try_lead(at(27)).await.unwrap(), "a has lost it and must stand by");
    let lease = api.get("kpool-controller").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(lease.lease_transitions, Some(1));
}

#[tokio::test]
async fn a_released_lease_passes_to_the_standby_at_once() {
    let (a, b, api) = pair().await;
    assert!(a.try_lead(at(0)).await.unwrap());
    b.release().await.unwrap(); // not the holder: nothing changes
    assert_eq!(holder(&api).await.as_deref(), Some("replica-a"));
    a.release().await.unwrap();
    assert_eq!(holder(&api).await, None);
    assert!(b.try_lead(at(1)).await.unwrap());
}

#[tokio::test]
async fn when_both_decide_at_once_exactly_one_leads() {
    for round in 0..20 {
        let (a, b, _) = pair().await;
        let (ra, rb) = tokio::join!(a.try_lead(at(round)), b.try_lead(at(round)));
        assert!(ra.unwrap() ^ rb.unwrap(), "round {round}: exactly one leader");
        // And again when the lease has expired: one takes it over, the other stands by.
        let later = at(round + 100);
        let (ra, rb) = tokio::join!(a.try_lead(later), b.try_lead(later));
        assert!(ra.unwrap() ^ rb.unwrap(), "round {round}: exactly one after expiry");
    }
}

#[tokio::test]
async fn a_decision_on_a_stale_read_does_not_land() {
    let (a, b, api) = pair().await;
    assert!(a.try_lead(at(0)).await.unwrap());
    let stale = api.get("kpool-controller").await.unwrap();
    assert!(a.try_lead(at(5)).await.unwrap(), "a renews: the resourceVersion moves on");
    // b decided from the old read that the lease had expired; its write must conflict.
    let mut takeover = stale.clone();
    takeover.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    let err = api.replace("kpool-controller", &Default::default(), &takeover).await.unwrap_err();
    assert!(kpool::controllers::is_conflict(&err), "{err}");
    assert_eq!(holder(&api).await.as_deref(), Some("replica-a"));
    assert!(!b.try_lead(at(6)).await.unwrap());
}
