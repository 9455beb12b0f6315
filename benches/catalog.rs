//! Reading and querying a large gpuhunt catalog: generates a 100,000-row v2 CSV file from
//! a fixed seed, then measures `Catalog::parse`, two queries (a GPU one and a CPU one) and
//! the whole `kubectl-pool offers --catalog DIR --gpu A100` process on that file.
//! Run with `cargo bench --bench catalog`; it prints where it wrote the file, so that
//! `benches/gpuhunt_bench.py PATH` can measure gpuhunt on the same file.

mod support;

use support::Rng;

use std::hint::black_box;
use std::time::{Duration, Instant};

use kpool::api::policy::SpotPolicy;
use kpool::api::resources::ResourcesSpec;
use kpool::backends::catalog::{Catalog, COLUMNS};
use kpool::core::policy::{EffectivePolicy, Origin};

const ROWS: usize = 100_000;
const SEED: u64 = 0x6b70_6f6f_6c21;

/// (name, vendor, memory GB, $/h per GPU)
const GPUS: &[(&str, &str, f64, f64)] = &[
    ("T4", "nvidia", 16.0, 0.35),
    ("L4", "nvidia", 24.0, 0.7),
    ("A10G", "nvidia", 24.0, 1.0),
    ("L40S", "nvidia", 48.0, 1.8),
    ("A100", "nvidia", 40.0, 2.2),
    ("A100", "nvidia", 80.0, 3.0),
    ("H100", "nvidia", 80.0, 4.5),
    ("MI300X", "amd", 192.0, 4.0),
    ("v5litepod-8", "google", 16.0, 1.2),
];

/// A gpuhunt v2 catalog of `rows` rows, from `seed`.
fn generate(rows: usize, seed: u64) -> String {
    let regions: Vec<String> = (0..30).map(|i| format!("region-{i}")).collect();
    let mut rng = Rng(seed);
    let mut out = csv::Writer::from_writer(Vec::with_capacity(rows * 110));
    out.write_record(COLUMNS).unwrap();
    for i in 0..rows {
        let spot = rng.chance(0.2);
        let arm = rng.chance(0.15);
        let cpu = 2u32 << rng.below(7);
        let memory = f64::from(cpu) * [2.0, 4.0, 8.0][rng.below(3)];
        let mut price = f64::from(cpu) * 0.045;
        let (mut gpu_count, mut gpu_name, mut gpu_memory, mut gpu_vendor) = (0, "", String::new(), "");
        if rng.chance(0.6) {
            let &(name, vendor, mem, per_gpu) = rng.pick(GPUS);
            gpu_count = 1u32 << rng.below(4);
            (gpu_name, gpu_memory, gpu_vendor) = (name, mem.to_string(), vendor);
            price += per_gpu * f64::from(gpu_count);
        }
        if spot {
            price *= 0.4;
        }
        let disk = if rng.chance(0.5) { String::new() } else { format!("{}", 100 << rng.below(6)) };
        let flags = if rng.chance(0.02) { "some-flag" } else { "" };
        let provider_data = if rng.chance(0.3) {
            format!(r#"{{"is_dws_calendar_mode": false, "zone": "z{}"}}"#, rng.below(4))
        } else {
            "{}".to_string()
        };
        let row = [
            format!("type-{}.{}x", i % 997, cpu),
            rng.pick(&regions).clone(),
            format!("{:.4}", price * (0.9 + (rng.below(200) as f64) / 1000.0)),
            cpu.to_string(),
            format!("{memory:.1}"),
            gpu_count.to_string(),
            gpu_name.to_string(),
            gpu_memory,
            if spot { "True" } else { "False" }.to_string(),
            disk,
            gpu_vendor.to_string(),
            flags.to_string(),
            if arm { "arm" } else { "x86" }.to_string(),
            provider_data,
        ];
        out.write_record(&row).unwrap();
    }
    String::from_utf8(out.into_inner().unwrap()).unwrap()
}

/// Runs `f` `runs` times; returns the fastest and the median time.
fn measure<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    (times[0], times[runs / 2])
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("catalog-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("aws.csv");
    let text = generate(ROWS, SEED);
    std::fs::write(&path, &text).unwrap();
    println!("catalog: {} ({ROWS} rows, {:.1} MB, seed {SEED:#x})", path.display(), text.len() as f64 / 1e6);

    let (fastest, median) = measure(7, || Catalog::parse("aws", "aws", &text).unwrap());
    println!("parse:       fastest {}, median {} (7 runs)", ms(fastest), ms(median));
    let catalog = Catalog::from(Catalog::parse("aws", "aws", &text).unwrap());

    // Same queries as benches/gpuhunt_bench.py.
    let queries = [
        ("gpu query", ResourcesSpec { gpu: Some("A100,H100:80GB:1..".into()), ..Default::default() }, SpotPolicy::Auto),
        (
            "cpu query",
            ResourcesSpec {
                cpu: Some("8..".into()),
                memory: Some("32GB..".into()),
                gpu: Some("0".into()),
                ..Default::default()
            },
            SpotPolicy::OnDemand,
        ),
    ];
    for (name, spec, spot_policy) in queries {
        let req = spec.resolve().unwrap();
        let policy = EffectivePolicy { spot_policy, ..EffectivePolicy::defaults(Origin::Run) };
        let all = catalog.query(&req, &policy, usize::MAX).len();
        let (fastest, median) = measure(21, || catalog.query(&req, &policy, usize::MAX));
        println!("{name}:   fastest {}, median {} (21 runs, all {all} matches)", ms(fastest), ms(median));
        let (fastest, median) = measure(21, || catalog.query(&req, &policy, 20));
        println!("{name}:   fastest {}, median {} (21 runs, cheapest 20)", ms(fastest), ms(median));
    }

    // The whole `kubectl pool offers --catalog DIR` process (start, read, rank, print) on
    // the same file: what a user waits for.
    let plugin = env!("CARGO_BIN_EXE_kubectl-pool");
    let args = ["offers", "--catalog", &dir.display().to_string(), "--gpu", "A100"].map(String::from);
    let run = || {
        let out = std::process::Command::new(plugin).args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout.len()
    };
    let (fastest, median) = measure(21, run);
    println!(
        "whole process: fastest {}, median {} (21 runs of kubectl-pool {})",
        ms(fastest),
        ms(median),
        args.join(" ")
    );
    println!("compare: python3 benches/gpuhunt_bench.py {}", path.display());
}
