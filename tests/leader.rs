//! Leader election against the in-memory API: one leader at a time, renewals, takeover
//! once the Lease stops changing, release, a race where both replicas decide at the same
//! moment, Lease calls that hang, and replicas whose clocks disagree.
//!
//! Time is tokio's paused clock (`start_paused`): the electors measure expiry and
//! deadlines on it, and `advance`/`sleep` move it without waiting. The wall-clock
//! timestamps handed to `try_lead` are what each replica would write into `renewTime`;
//! skewing them models replicas whose clocks disagree.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kpool::controllers::leader::{Elector, LeaderConfig};
use kube::{Api, Client};
use kube_fake_client::ClientBuilder;
use tokio::time::{advance, Instant};

/// The defaults of `LeaderConfig::new`, as documented (README, `kpool --help`).
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// What a replica's connection to the API does with its requests.
const ANSWER: u8 = 0;
const HANG_ALL: u8 = 1;
const HANG_WRITES: u8 = 2;

async fn store() -> Client {
    ClientBuilder::new().with_resource::<Lease>().build().await.expect("fake client")
}

/// A replica on its own connection to `store`, whose requests hang (never answer) while
/// the returned switch says so.
fn replica(store: &Client, identity: &str) -> (Elector, Arc<AtomicU8>) {
    let mode = Arc::new(AtomicU8::new(ANSWER));
    let switch = mode.clone();
    let inner = store.clone();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let hang = match switch.load(Ordering::SeqCst) {
            HANG_ALL => true,
            HANG_WRITES => req.method() != http::Method::GET,
            _ => false,
        };
        let inner = inner.clone();
        async move {
            if hang {
                std::future::pending::<()>().await;
            }
            inner.send(req).await
        }
    });
    let client = Client::new(service, "kpool-system");
    (Elector::new(client, LeaderConfig::new("kpool-system", identity)), mode)
}

async fn pair() -> (Elector, Elector, Api<Lease>) {
    let client = store().await;
    let (a, _) = replica(&client, "replica-a");
    let (b, _) = replica(&client, "replica-b");
    (a, b, Api::namespaced(client, "kpool-system"))
}

fn at(secs: i64) -> Timestamp {
    "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_secs(secs)
}

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get("kpool-controller").await.unwrap().spec.unwrap().holder_identity
}

#[tokio::test(start_paused = true)]
async fn one_leader_renews_and_a_standby_takes_over_once_the_lease_stops_changing() {
    let (a, b, api) = pair().await;
    assert!(a.try_lead(at(0)).await.unwrap());
    assert!(!b.try_lead(at(0)).await.unwrap(), "a's lease is live");
    advance(Duration::from_secs(10)).await;
    assert!(a.try_lead(at(10)).await.unwrap(), "a renews");
    advance(Duration::from_secs(14)).await;
    assert!(!b.try_lead(at(24)).await.unwrap(), "b sees a's renewal for the first time");
    advance(Duration::from_secs(14)).await;
    assert!(!b.try_lead(at(38)).await.unwrap(), "b has seen the renewal unchanged for 14 s only");
    assert_eq!(holder(&api).await.as_deref(), Some("replica-a"));
    advance(Duration::from_secs(1)).await;
    assert!(b.try_lead(at(39)).await.unwrap(), "unchanged for 15 s: b takes over");
    assert!(!a.try_lead(at(40)).await.unwrap(), "a has lost it and must stand by");
    let lease = api.get("kpool-controller").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(lease.lease_transitions, Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_released_lease_passes_to_the_standby_at_once() {
    let (a, b, api) = pair().await;
    assert!(a.try_lead(at(0)).await.unwrap());
    b.release().await.unwrap(); // not the holder: nothing changes
    assert_eq!(holder(&api).await.as_deref(), Some("replica-a"));
    a.release().await.unwrap();
    assert_eq!(holder(&api).await, None);
    assert!(b.try_lead(at(1)).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn when_both_decide_at_once_exactly_one_leads() {
    for round in 0..20 {
        let client = store().await;
        let (a, _) = replica(&client, "replica-a");
        let (b, _) = replica(&client, "replica-b");
        let (ra, rb) = tokio::join!(a.try_lead(at(round)), b.try_lead(at(round)));
        assert!(ra.unwrap() ^ rb.unwrap(), "round {round}: exactly one leader");
        // And when a third replica's lease has expired: one takes it over, the other
        // stands by.
        let (c, _) = replica(&client, "replica-c");
        a.release().await.unwrap();
        b.release().await.unwrap();
        assert!(c.try_lead(at(round)).await.unwrap());
        let (ra, rb) = tokio::join!(a.try_lead(at(round)), b.try_lead(at(round)));
        assert!(!ra.unwrap() && !rb.unwrap(), "round {round}: c's lease is live");
        advance(LEASE_DURATION).await;
        let later = at(round + 100);
        let (ra, rb) = tokio::join!(a.try_lead(later), b.try_lead(later));
        assert!(ra.unwrap() ^ rb.unwrap(), "round {round}: exactly one after expiry");
    }
}

#[tokio::test(start_paused = true)]
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

/// Lease calls that never answer (every call, or only the writes) end the leader's
/// `keep()` within the renew deadline of its last successful renewal, whether they hang
/// from the first renewal on or after a few good ones.
#[tokio::test(start_paused = true)]
async fn hanging_lease_calls_make_keep_return_within_the_renew_deadline() {
    for mode in [HANG_ALL, HANG_WRITES] {
        for good_renewals_for in [Duration::ZERO, Duration::from_secs(7)] {
            let client = store().await;
            let (a, switch) = replica(&client, "replica-a");
            let started = Instant::now();
            a.acquire().await;
            let hang = async {
                tokio::time::sleep(good_renewals_for).await;
                switch.store(mode, Ordering::SeqCst);
                std::future::pending::<()>().await;
            };
            let keep = async {
                a.keep().await;
                Instant::now()
            };
            tokio::pin!(hang);
            let returned = tokio::time::timeout(Duration::from_secs(300), async {
                tokio::select! { at = keep => at, _ = &mut hang => unreachable!() }
            })
            .await
            .unwrap_or_else(|_| panic!("mode {mode}: keep() still waits on a hung Lease call after 300 s"));
            let hung_at = started + good_renewals_for;
            assert!(returned >= hung_at, "mode {mode}: keep() returned while renewals still worked");
            assert!(
                returned - hung_at <= RENEW_DEADLINE,
                "mode {mode}: keep() returned {:?} after the calls hung, beyond the renew deadline",
                returned - hung_at
            );
        }
    }
}

/// The leader whose calls hang has stopped acting a margin (lease duration − renew
/// deadline) before the standby, polling the same Lease, takes over.
#[tokio::test(start_paused = true)]
async fn the_leader_stops_acting_before_a_standby_takes_over() {
    let client = store().await;
    let (a, a_switch) = replica(&client, "replica-a");
    let (b, _) = replica(&client, "replica-b");
    a.acquire().await;
    let stopped = async {
        a.keep().await;
        Instant::now()
    };
    let took_over = async {
        b.acquire().await;
        Instant::now()
    };
    let hang = async {
        tokio::time::sleep(Duration::from_secs(7)).await;
        a_switch.store(HANG_ALL, Ordering::SeqCst);
    };
    let (stopped, took_over, ()) =
        tokio::time::timeout(Duration::from_secs(300), async { tokio::join!(stopped, took_over, hang) })
            .await
            .expect("the leader never stopped or the standby never took over");
    assert!(
        took_over >= stopped + (LEASE_DURATION - RENEW_DEADLINE),
        "the standby took over {:?} after the leader stopped",
        took_over.checked_duration_since(stopped)
    );
}

/// A standby whose wall clock runs 16 s ahead reads every renewal as already expired
/// (`renewTime` + 15 s is in its past); it must still not take over while the record
/// keeps changing.
#[tokio::test(start_paused = true)]
async fn a_standby_with_a_clock_16s_ahead_does_not_take_over_a_live_lease() {
    let (a, b, api) = pair().await;
    assert!(a.try_lead(at(0)).await.unwrap());
    for step in 1..=30 {
        advance(Duration::from_secs(2)).await;
        let now = 2 * step;
        assert!(a.try_lead(at(now)).await.unwrap(), "a renews at {now} s");
        assert!(!b.try_lead(at(now + 16)).await.unwrap(), "b took over a live lease at {now} s");
    }
    assert_eq!(holder(&api).await.as_deref(), Some("replica-a"));
}

/// The holder's clock ran an hour ahead when it last renewed, then it stopped (a crash):
/// by the timestamps the lease looks held for another hour, but its record has not
/// changed for a lease duration, so the standby takes over, and not earlier.
#[tokio::test(start_paused = true)]
async fn a_standby_takes_over_a_lease_whose_record_stops_changing_for_a_lease_duration() {
    let (a, b, api) = pair().await;
    assert!(a.try_lead(at(3600)).await.unwrap());
    assert!(!b.try_lead(at(0)).await.unwrap(), "b sees a's lease for the first time");
    advance(LEASE_DURATION - Duration::from_secs(1)).await;
    assert!(!b.try_lead(at(14)).await.unwrap(), "seen unchanged for 14 s only");
    advance(Duration::from_secs(1)).await;
    assert!(b.try_lead(at(15)).await.unwrap(), "unchanged for a lease duration: b takes over");
    assert_eq!(holder(&api).await.as_deref(), Some("replica-b"));
}
