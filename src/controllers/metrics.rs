//! Prometheus metrics, and the small HTTP server for `/metrics`, `/healthz` and `/readyz`.
//!
//! Labels are bounded: controller kind, error category, instance phase, backend name
//! (Backend objects are few and made by administrators), provisioning failure category.
//! No object names other than backends, no error strings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: String,
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    backend: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    resource: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpendLabels {
    backend: String,
    /// `busy`, `idle` or `other` (booting, tearing down).
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlacedLabels {
    backend: String,
    /// `true` when the run found the instance already up.
    reused: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
    backend: String,
}

/// What one instance contributes to the gauges.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceSample {
    pub phase: &'static str,
    /// `""` before an offer is chosen.
    pub backend: String,
    /// $/hour of the machine, when it holds one.
    pub price: Option<f64>,
}

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    durations: Family<KindLabels, Histogram>,
    attempts: Family<BackendLabels, Counter>,
    launch_failures: Family<ReasonLabels, Counter>,
    lost: Family<ReasonLabels, Counter>,
    health_failures: Family<BackendLabels, Counter>,
    instances: Family<PhaseLabels, Gauge>,
    price: Family<BackendLabels, Gauge<f64, AtomicU64>>,
    idle_cost: Family<BackendLabels, Gauge<f64, AtomicU64>>,
    leader: Gauge,
    requests: Family<RequestLabels, Counter>,
    spend: Family<SpendLabels, Counter<f64, AtomicU64>>,
    placed: Family<PlacedLabels, Counter>,
    samples: Mutex<Samples>,
    ready: AtomicBool,
}

/// The instances' samples, and when their prices were last added to the spend.
#[derive(Default)]
struct Samples {
    by_uid: HashMap<String, InstanceSample>,
    accrued_until: Option<std::time::Instant>,
    totals: Totals,
}

/// Sums over the samples, kept as each changes: a change costs the labels it touches,
/// not a pass over every instance (which made a wave of N instance changes N²).
#[derive(Default)]
struct Totals {
    /// Instances by (phase, backend).
    count: HashMap<(&'static str, String), i64>,
    /// $/hour by backend, of every priced machine and of the idle ones, each with how
    /// many machines make it (a sum of none is 0 exactly, whatever rounding left).
    price: HashMap<String, (f64, i64)>,
    idle: HashMap<String, (f64, i64)>,
    /// $/hour by backend and spend state, of the machines with a finite price.
    rate: HashMap<(String, &'static str), (f64, i64)>,
}

/// The spend state of a phase.
fn spend_state(phase: &str) -> &'static str {
    match phase {
        "Busy" => "busy",
        "Idle" => "idle",
        _ => "other",
    }
}

impl Totals {
    /// Adds (`sign` 1) or takes away (`sign` -1) one sample.
    fn apply(&mut self, s: &InstanceSample, sign: i64) {
        *self.count.entry((s.phase, s.backend.clone())).or_default() += sign;
        let Some(p) = s.price else { return };
        let add = |sum: &mut (f64, i64)| {
            sum.1 += sign;
            sum.0 = if sum.1 == 0 { 0.0 } else { sum.0 + sign as f64 * p };
        };
        add(self.price.entry(s.backend.clone()).or_default());
        if s.phase == "Idle" {
            add(self.idle.entry(s.backend.clone()).or_default());
        }
        if p.is_finite() {
            add(self.rate.entry((s.backend.clone(), spend_state(s.phase))).or_default());
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kpool");
        let reconciles = Family::<KindLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let durations = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let attempts = Family::<BackendLabels, Counter>::default();
        let launch_failures = Family::<ReasonLabels, Counter>::default();
        let lost = Family::<ReasonLabels, Counter>::default();
        let health_failures = Family::<BackendLabels, Counter>::default();
        let instances = Family::<PhaseLabels, Gauge>::default();
        let price = Family::<BackendLabels, Gauge<f64, AtomicU64>>::default();
        let idle_cost = Family::<BackendLabels, Gauge<f64, AtomicU64>>::default();
        let leader = Gauge::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let spend = Family::<SpendLabels, Counter<f64, AtomicU64>>::default();
        let placed = Family::<PlacedLabels, Counter>::default();
        registry.register(
            "spend_dollars",
            "What the machines held by this controller cost while it ran (their price × time), by backend and \
             state (busy, idle, other)",
            spend.clone(),
        );
        registry.register(
            "runs_placed",
            "Runs placed on an instance, by backend and whether the instance was already up (reused)",
            placed.clone(),
        );
        registry.register("reconciles", "Reconciles, by controller", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Failed reconciles, by controller and error category",
            failures.clone(),
        );
        registry.register("reconcile_duration_seconds", "Time spent in one reconcile", durations.clone());
        registry.register("provisioning_attempts", "Machine launches attempted, by backend", attempts.clone());
        registry.register(
            "provisioning_failures",
            "Failed machine launches, by backend and error category",
            launch_failures.clone(),
        );
        registry.register(
            "instances_lost",
            "Live instances given up by the health check, by backend and reason (Reclaimed, MachineGone, Unreachable)",
            lost.clone(),
        );
        registry.register(
            "health_check_failures",
            "Health checks the provider did not answer, by backend",
            health_failures.clone(),
        );
        registry.register("instances", "Instances, by phase and backend", instances.clone());
        registry.register("price_dollars_per_hour", "What the machines held cost, by backend", price.clone());
        registry.register("idle_cost_dollars_per_hour", "What the idle machines cost, by backend", idle_cost.clone());
        registry.register("leader", "1 when this replica leads and acts, 0 on standby", leader.clone());
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API, by verb, resource and outcome (2xx, 404, 409, 4xx, 5xx, error)",
            requests.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            durations,
            attempts,
            launch_failures,
            lost,
            health_failures,
            instances,
            price,
            idle_cost,
            leader,
            requests,
            spend,
            placed,
            samples: Mutex::default(),
            ready: AtomicBool::new(false),
        }
    }

    pub fn reconciled(&self, kind: &str, took: Duration) {
        let labels = KindLabels { kind: kind.to_string() };
        self.reconciles.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: &str, category: &str) {
        self.failures.get_or_create(&FailureLabels { kind: kind.to_string(), category: category.to_string() }).inc();
    }

    pub fn launch_attempted(&self, backend: &str) {
        self.attempts.get_or_create(&BackendLabels { backend: backend.to_string() }).inc();
    }

    pub fn launch_failed(&self, backend: &str, reason: &str) {
        let labels = ReasonLabels { backend: backend.to_string(), reason: reason.to_string() };
        self.launch_failures.get_or_create(&labels).inc();
    }

    pub fn instance_lost(&self, backend: &str, reason: &str) {
        let labels = ReasonLabels { backend: backend.to_string(), reason: reason.to_string() };
        self.lost.get_or_create(&labels).inc();
    }

    pub fn health_check_failed(&self, backend: &str) {
        self.health_failures.get_or_create(&BackendLabels { backend: backend.to_string() }).inc();
    }

    /// Counts one request to the Kubernetes API.
    pub fn api_request(&self, verb: &str, resource: &str, outcome: &str) {
        let labels =
            RequestLabels { verb: verb.to_string(), resource: resource.to_string(), outcome: outcome.to_string() };
        self.requests.get_or_create(&labels).inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Counts a run placed on an instance of `backend`; `reused` when the instance was up
    /// before the run came (not provisioned for it).
    pub fn run_placed(&self, backend: &str, reused: bool) {
        let labels = PlacedLabels { backend: backend.to_string(), reused: reused.to_string() };
        self.placed.get_or_create(&labels).inc();
    }

    /// Adds to the spend what the sampled machines cost from the last time until `now`.
    fn accrue(&self, samples: &mut Samples, now: std::time::Instant) {
        let from = samples.accrued_until.replace(now);
        let Some(hours) = from.map(|f| now.saturating_duration_since(f).as_secs_f64() / 3600.0) else { return };
        for ((backend, state), (rate, n)) in &samples.totals.rate {
            if *n > 0 {
                let labels = SpendLabels { backend: backend.clone(), state: state.to_string() };
                self.spend.get_or_create(&labels).inc_by(rate * hours);
            }
        }
    }

    /// Records what an instance (by UID) looks like now; `None` forgets it.
    pub fn observe_instance(&self, uid: &str, sample: Option<InstanceSample>) {
        self.observe_instance_at(uid, sample, std::time::Instant::now());
    }

    fn observe_instance_at(&self, uid: &str, sample: Option<InstanceSample>, now: std::time::Instant) {
        let mut guard = self.samples.lock().expect("samples");
        let samples = &mut *guard;
        if sample.as_ref() == samples.by_uid.get(uid) {
            return;
        }
        // What the machines cost until this change, at the prices before it.
        self.accrue(samples, now);
        let old = match sample {
            Some(s) => {
                samples.totals.apply(&s, 1);
                samples.by_uid.insert(uid.to_string(), s)
            }
            None => samples.by_uid.remove(uid),
        };
        if let Some(old) = &old {
            samples.totals.apply(old, -1);
        }
        // The gauges of the labels the change touched.
        let touched = [old.as_ref(), samples.by_uid.get(uid)];
        for s in touched.into_iter().flatten() {
            let t = &samples.totals;
            let n = t.count.get(&(s.phase, s.backend.clone())).copied().unwrap_or(0);
            let labels = PhaseLabels { phase: s.phase.to_string(), backend: s.backend.clone() };
            match n {
                0 => drop(self.instances.remove(&labels)),
                n => drop(self.instances.get_or_create(&labels).set(n)),
            };
            for (family, sums) in [(&self.price, &t.price), (&self.idle_cost, &t.idle)] {
                let labels = BackendLabels { backend: s.backend.clone() };
                match sums.get(&s.backend) {
                    Some((sum, n)) if *n > 0 => drop(family.get_or_create(&labels).set(*sum)),
                    _ => drop(family.remove(&labels)),
                }
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.render_at(std::time::Instant::now())
    }

    fn render_at(&self, now: std::time::Instant) -> String {
        self.accrue(&mut self.samples.lock().expect("samples"), now);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

fn respond(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves `/metrics`, `/healthz` (the process is up) and `/readyz` (the controllers are
/// running, as leader or standby) on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let reply = match path {
                "/metrics" => {
                    respond("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", &metrics.render())
                }
                "/healthz" => respond("200 OK", "text/plain", "ok\n"),
                "/readyz" if metrics.ready.load(Ordering::SeqCst) => respond("200 OK", "text/plain", "ok\n"),
                "/readyz" => respond("503 Service Unavailable", "text/plain", "starting\n"),
                _ => respond("404 Not Found", "text/plain", "not found\n"),
            };
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_gauges_follow_the_samples() {
        let m = Metrics::new();
        let sample = |phase, price| InstanceSample { phase, backend: "aws".into(), price };
        m.observe_instance("a", Some(sample("Idle", Some(1.5))));
        m.observe_instance("b", Some(sample("Busy", Some(2.0))));
        m.observe_instance("c", Some(sample("Pending", None)));
        let text = m.render();
        assert!(text.contains("kpool_instances{phase=\"Idle\",backend=\"aws\"} 1"), "{text}");
        assert!(text.contains("kpool_price_dollars_per_hour{backend=\"aws\"} 3.5"), "{text}");
        assert!(text.contains("kpool_idle_cost_dollars_per_hour{backend=\"aws\"} 1.5"), "{text}");
        m.observe_instance("a", None);
        let text = m.render();
        assert!(!text.contains("phase=\"Idle\""), "{text}");
        assert!(text.contains("kpool_price_dollars_per_hour{backend=\"aws\"} 2.0"), "{text}");
        assert!(!text.contains("kpool_idle_cost_dollars_per_hour{"), "{text}");
    }

    /// The gauges are kept by adding and taking away each change: after any sequence of
    /// changes they say what a count over the instances as they are now says.
    #[test]
    fn instance_gauges_kept_change_by_change_match_a_count_over_all() {
        let m = Metrics::new();
        let mut now: HashMap<String, InstanceSample> = HashMap::new();
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..400 {
            let uid = format!("u{}", next(12));
            let sample = match next(5) {
                0 => None,
                k => Some(InstanceSample {
                    phase: ["Idle", "Busy", "Pending"][next(3) as usize],
                    backend: ["aws", "lambda"][next(2) as usize].into(),
                    price: (k > 1).then(|| [0.5, 1.25, 2.0][next(3) as usize]),
                }),
            };
            match &sample {
                Some(s) => now.insert(uid.clone(), s.clone()),
                None => now.remove(&uid),
            };
            m.observe_instance(&uid, sample);
        }
        let text = m.render();
        for backend in ["aws", "lambda"] {
            for phase in ["Idle", "Busy", "Pending"] {
                let n = now.values().filter(|s| s.phase == phase && s.backend == backend).count();
                let line = format!("kpool_instances{{phase=\"{phase}\",backend=\"{backend}\"}} ");
                match n {
                    0 => assert!(!text.contains(&line), "{line} in {text}"),
                    n => assert!(text.contains(&format!("{line}{n}\n")), "{line}{n} not in {text}"),
                }
            }
            let priced = now.values().filter(|s| s.backend == backend && s.price.is_some());
            let sum: f64 = priced.clone().filter_map(|s| s.price).sum();
            let line = format!("kpool_price_dollars_per_hour{{backend=\"{backend}\"}} ");
            match priced.count() {
                0 => assert!(!text.contains(&line), "{line} in {text}"),
                _ => assert!(text.contains(&format!("{line}{sum:?}\n")), "{line}{sum:?} not in {text}"),
            }
        }
    }

    #[test]
    fn spend_accrues_price_times_time_by_state_and_placements_are_counted() {
        let m = Metrics::new();
        let t0 = std::time::Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let sample = |phase, price| Some(InstanceSample { phase, backend: "aws".into(), price: Some(price) });
        m.observe_instance_at("a", sample("Busy", 2.0), at(0));
        m.observe_instance_at("b", sample("Idle", 1.0), at(0));
        // An hour: a busy $2, b idle $1; then a goes idle, b goes, and half an hour passes.
        m.observe_instance_at("a", sample("Idle", 2.0), at(3600));
        m.observe_instance_at("b", None, at(3600));
        let text = m.render_at(at(5400));
        assert!(text.contains("kpool_spend_dollars_total{backend=\"aws\",state=\"busy\"} 2.0"), "{text}");
        assert!(text.contains("kpool_spend_dollars_total{backend=\"aws\",state=\"idle\"} 2.0"), "{text}");
        m.run_placed("aws", true);
        m.run_placed("aws", false);
        m.run_placed("aws", true);
        let text = m.render_at(at(5400));
        assert!(text.contains("kpool_runs_placed_total{backend=\"aws\",reused=\"true\"} 2"), "{text}");
    }

    #[test]
    fn reconciles_and_failures_are_counted_by_bounded_labels() {
        let m = Metrics::new();
        m.reconciled("instance", Duration::from_millis(3));
        m.reconciled("instance", Duration::from_millis(30));
        m.failed("run", "Conflict");
        m.launch_attempted("aws");
        m.launch_failed("aws", "InsufficientCapacity");
        let text = m.render();
        assert!(text.contains("kpool_reconciles_total{kind=\"instance\"} 2"), "{text}");
        assert!(text.contains("kpool_reconcile_duration_seconds_count{kind=\"instance\"} 2"), "{text}");
        assert!(text.contains("kpool_reconcile_failures_total{kind=\"run\",category=\"Conflict\"} 1"), "{text}");
        assert!(text.contains("kpool_provisioning_failures_total{backend=\"aws\",reason=\"InsufficientCapacity\"} 1"));
        m.api_request("patch", "runs/status", "409");
        m.api_request("patch", "runs/status", "409");
        let text = m.render();
        assert!(
            text.contains("kpool_api_requests_total{verb=\"patch\",resource=\"runs/status\",outcome=\"409\"} 2"),
            "{text}"
        );
    }
}
