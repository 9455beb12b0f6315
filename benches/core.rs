//! Benchmarks of the hot pure decisions: matching pending runs to idle instances, and
//! ranking offers. Data is generated from a fixed seed, so every run measures the same
//! inputs. Run with `cargo bench --bench core`; a summary of mean times per case is
//! printed at the end.

mod support;

use support::Rng;

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Bencher, Criterion, SamplingMode};
use kpool::api::offer::Offer;
use kpool::api::policy::SpotPolicy;
use kpool::api::resources::{CpuArch, CpuSpec, GpuSpec, GpuVendor, Range, Requirements};
use kpool::core::matching::{assign, assign_naive, IdleInstance, PendingRun};
use kpool::core::offers::{offer_fits, offer_order, rank_offers};
use kpool::core::policy::{EffectivePolicy, Origin};

const BACKENDS: &[&str] = &["aws", "gcp", "lambda"];
const REGIONS: &[&str] = &["us-east-1", "us-west-2", "eu-west-1"];
/// (name, vendor, memory GB, $/h per GPU)
const GPUS: &[(&str, GpuVendor, f64, f64)] = &[
    ("T4", GpuVendor::Nvidia, 16.0, 0.35),
    ("L4", GpuVendor::Nvidia, 24.0, 0.7),
    ("A10G", GpuVendor::Nvidia, 24.0, 1.0),
    ("L40S", GpuVendor::Nvidia, 48.0, 1.8),
    ("A100", GpuVendor::Nvidia, 80.0, 3.0),
    ("H100", GpuVendor::Nvidia, 80.0, 4.5),
    ("MI300X", GpuVendor::Amd, 192.0, 4.0),
];

/// A catalog entry: CPU-only or with 1, 2, 4 or 8 GPUs of one model.
fn random_offer(rng: &mut Rng) -> Offer {
    let cpu = 2u32 << rng.below(6);
    let mut offer = Offer {
        backend: rng.pick(BACKENDS).to_string(),
        region: rng.pick(REGIONS).to_string(),
        cpu,
        cpu_arch: Some(if rng.chance(0.2) { CpuArch::Arm } else { CpuArch::X86 }),
        memory: f64::from(cpu * 4),
        disk: if rng.chance(0.5) { Some(100.0 * (1 + rng.below(5)) as f64) } else { None },
        spot: rng.chance(0.3),
        price: 0.05 * f64::from(cpu),
        ..Offer::default()
    };
    if rng.chance(0.6) {
        let &(name, vendor, memory, price) = rng.pick(GPUS);
        let count = 1u32 << rng.below(4);
        offer.gpu_count = count;
        offer.gpu_name = Some(name.into());
        offer.gpu_vendor = Some(vendor);
        offer.gpu_memory = memory;
        offer.price += price * f64::from(count);
        offer.instance_type = format!("{}-{}x{}-{}", name.to_lowercase(), count, name, cpu);
    } else {
        offer.instance_type = format!("c-{cpu}");
    }
    if offer.spot {
        offer.price *= 0.4;
    }
    // Cents, so that equal prices (and tie-breaks) happen.
    offer.price = (offer.price * (0.9 + 0.2 * rng.below(100) as f64 / 100.0) * 100.0).round() / 100.0;
    offer
}

fn random_requirements(rng: &mut Rng) -> Requirements {
    let mut req = Requirements {
        cpu: CpuSpec { arch: None, count: Range::at_least(2u32 << rng.below(3)) },
        memory: Range::at_least(8.0),
        disk: Some(Range::at_least(100.0)),
        gpu: None,
    };
    if rng.chance(0.6) {
        let names = (0..rng.below(3)).map(|_| rng.pick(GPUS).0.to_string()).collect();
        let count = if rng.chance(0.5) { Range::at_least(1) } else { Range::exact(1u32 << rng.below(3)) };
        let memory = rng.chance(0.3).then(|| Range::at_least(*rng.pick(&[24.0, 40.0, 80.0])));
        let compute_capability = rng.chance(0.1).then_some((8, 0));
        req.gpu = Some(GpuSpec { vendor: None, names, count, memory, total_memory: None, compute_capability });
    }
    req
}

fn random_policy(rng: &mut Rng) -> EffectivePolicy {
    EffectivePolicy {
        spot_policy: *rng.pick(&[SpotPolicy::OnDemand, SpotPolicy::Spot, SpotPolicy::Auto]),
        max_price: rng.chance(0.5).then(|| *rng.pick(&[1.0, 5.0, 20.0, 50.0])),
        backends: if rng.chance(0.2) { vec![rng.pick(BACKENDS).to_string()] } else { vec![] },
        ..EffectivePolicy::defaults(Origin::Run)
    }
}

/// `n` idle instances drawn from a catalog of 300 shapes, and `n` runs, over 3
/// namespaces × 3 pools; 5% of instances are reserved, 1% of runs pinned.
fn matching_data(n: usize) -> (Vec<PendingRun>, Vec<IdleInstance>) {
    let mut rng = Rng(42);
    let catalog: Vec<Offer> = (0..300).map(|_| random_offer(&mut rng)).collect();
    let namespaces = ["ml", "research", "prod"];
    let pools = ["default", "gpu", "batch"];
    let idle = (0..n)
        .map(|i| IdleInstance {
            name: format!("inst-{i:05}"),
            namespace: rng.pick(&namespaces).to_string(),
            pool: rng.pick(&pools).to_string(),
            offer: rng.pick(&catalog).clone(),
            reserved_for: rng.chance(0.05).then(|| format!("run-{:05}", rng.below(n))),
        })
        .collect();
    let runs = (0..n)
        .map(|i| PendingRun {
            name: format!("run-{i:05}"),
            namespace: rng.pick(&namespaces).to_string(),
            pool: rng.pick(&pools).to_string(),
            requirements: random_requirements(&mut rng),
            policy: random_policy(&mut rng),
            pinned_instance: rng.chance(0.01).then(|| format!("inst-{:05}", rng.below(n))),
        })
        .collect();
    (runs, idle)
}

/// Mean time per call of each case, from the calls criterion made.
static SUMMARY: Mutex<Vec<(String, u64, Duration)>> = Mutex::new(Vec::new());

/// Benchmarks `f`, also recording its calls for the summary.
fn timed<R>(b: &mut Bencher<'_>, case: &str, mut f: impl FnMut() -> R) {
    b.iter_custom(|iters| {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        let elapsed = start.elapsed();
        let mut summary = SUMMARY.lock().unwrap();
        match summary.iter_mut().find(|(c, _, _)| c == case) {
            Some((_, n, total)) => {
                *n += iters;
                *total += elapsed;
            }
            None => summary.push((case.to_string(), iters, elapsed)),
        }
        elapsed
    });
}

fn bench_assign(c: &mut Criterion) {
    let mut group = c.benchmark_group("assign");
    for n in [2_000, 10_000] {
        let (runs, idle) = matching_data(n);
        let fast = assign(&runs, &idle);
        if n <= 2_000 {
            assert_eq!(fast, assign_naive(&runs, &idle), "assign and assign_naive disagree");
        }
        println!("assign {n}x{n}: {} of {n} runs matched", fast.len());
        let case = format!("assign/{n}x{n}");
        group.sampling_mode(SamplingMode::Auto).measurement_time(Duration::from_secs(3));
        group.bench_function(&case, |b| timed(b, &case, || assign(&runs, &idle)));
        // The naive loop takes most of a second at 10,000: ten flat samples of one call.
        if n > 2_000 {
            group.sampling_mode(SamplingMode::Flat).measurement_time(Duration::from_secs(9));
        }
        let case = format!("assign_naive/{n}x{n}");
        group.bench_function(&case, |b| timed(b, &case, || assign_naive(&runs, &idle)));
    }
    group.finish();
}

fn bench_rank(c: &mut Criterion) {
    let mut rng = Rng(7);
    let offers: Vec<Offer> = (0..100_000).map(|_| random_offer(&mut rng)).collect();
    let policy = EffectivePolicy { spot_policy: SpotPolicy::Auto, ..EffectivePolicy::defaults(Origin::Run) };
    let broad = Requirements {
        cpu: CpuSpec { arch: None, count: Range::at_least(2) },
        memory: Range::at_least(8.0),
        disk: Some(Range::at_least(100.0)),
        gpu: None,
    };
    let gpu = Requirements {
        gpu: Some(GpuSpec {
            vendor: None,
            names: vec![],
            count: Range::at_least(1),
            memory: Some(Range::at_least(24.0)),
            total_memory: None,
            compute_capability: None,
        }),
        ..broad.clone()
    };
    let naive = |req: &Requirements| {
        let mut fit: Vec<&Offer> = offers.iter().filter(|o| offer_fits(req, &policy, o)).collect();
        fit.sort_by(|a, b| offer_order(a, b));
        fit.into_iter().take(50).cloned().collect::<Vec<_>>()
    };
    let mut group = c.benchmark_group("rank_offers");
    for (label, req) in [("cpu", &broad), ("gpu", &gpu)] {
        assert_eq!(rank_offers(&offers, req, &policy, 50), naive(req), "rank_offers and naive disagree");
        let case = format!("rank_offers/{label}/100k/limit50");
        group.bench_function(&case, |b| timed(b, &case, || rank_offers(&offers, req, &policy, 50)));
        let case = format!("naive_sort/{label}/100k/limit50");
        group.bench_function(&case, |b| timed(b, &case, || naive(req)));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_assign, bench_rank
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!("\nsummary (mean per call over every call criterion made, warm-up included):");
    for (case, n, total) in SUMMARY.lock().unwrap().iter() {
        println!("  {case:<36} {:>12.3} ms  ({n} calls)", total.as_secs_f64() * 1e3 / *n as f64);
    }
}
