//! What each idle policy costs on a workload, replayed through kpool's own decisions
//! (`kpool::core::costsim`).
//!
//! ```text
//! cargo run --release --example costsim -- [TRACE | --family steady|diurnal|heavy-tail|batch]
//!     [--seed N] [--days D] [--boot SECONDS] [--plot out.svg]
//! ```
//! Prints one row per policy (and the offline lower bound); `--plot` writes an SVG of
//! live/idle/busy machines and cumulative cost over time for fixed-5m and auto. Without a
//! trace or a family it prints every family, with the ratios that issue 15 asks for.

use std::fmt::Write as _;
use std::time::Duration;

use kpool::core::costsim::families::{generate, Family};
use kpool::core::costsim::{offline_bound, parse_trace, simulate, Config, Policy, PolicyReport, Sample, TraceRun};

struct Args {
    trace: Option<String>,
    family: Option<Family>,
    seed: u64,
    days: f64,
    boot: u64,
    plot: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { trace: None, family: None, seed: 1, days: 14.0, boot: 180, plot: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--family" => args.family = Some(value("--family")?.parse()?),
            "--seed" => args.seed = value("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--days" => args.days = value("--days")?.parse().map_err(|e| format!("--days: {e}"))?,
            "--boot" => args.boot = value("--boot")?.parse().map_err(|e| format!("--boot: {e}"))?,
            "--plot" => args.plot = Some(value("--plot")?),
            "-h" | "--help" => {
                return Err("usage: costsim [TRACE | --family steady|diurnal|heavy-tail|batch] [--seed N] [--days D] [--boot SECONDS] [--plot out.svg]".into())
            }
            _ if a.starts_with("--") => return Err(format!("unknown option {a}")),
            _ => args.trace = Some(a),
        }
    }
    Ok(args)
}

/// Every policy and the bound on one trace.
fn evaluate(trace: &[TraceRun], config: &Config) -> (Vec<PolicyReport>, PolicyReport) {
    (Policy::all().iter().map(|p| simulate(trace, config, p)).collect(), offline_bound(trace, config))
}

fn table(title: &str, reports: &[PolicyReport], bound: &PolicyReport) -> String {
    let mut s = format!("== {title}: {} runs\n", bound.runs);
    let _ = writeln!(
        s,
        "{:<14} {:>11} {:>10} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8}",
        "policy", "total $", "idle $", "/ bound", "launched", "reuse", "wait p50", "wait p99", "unplaced"
    );
    for r in reports.iter().chain(std::iter::once(bound)) {
        let _ = writeln!(
            s,
            "{:<14} {:>11.2} {:>10.2} {:>9.3} {:>9} {:>6.1}% {:>7.0}s {:>7.0}s {:>8}",
            r.policy,
            r.total_cost,
            r.idle_cost,
            r.total_cost / bound.total_cost,
            r.launched,
            100.0 * r.reuse_rate(),
            r.wait_p50,
            r.wait_p99,
            r.unplaceable
        );
    }
    s
}

/// A line of the plot: its dash pattern and its value at a sample.
type Series = (&'static str, fn(&Sample) -> f64);

fn find<'a>(reports: &'a [PolicyReport], name: &str) -> &'a PolicyReport {
    reports.iter().find(|r| r.policy == name).unwrap_or(&reports[0])
}

/// An SVG with two panels: machines (live, idle, busy) and cumulative cost, for each of
/// `reports`, over time.
fn plot(reports: &[&PolicyReport], title: &str) -> String {
    let (w, h, pad) = (1000.0, 300.0, 50.0);
    let t_max = reports.iter().flat_map(|r| r.timeline.last()).map(|s| s.t).fold(1.0, f64::max);
    let m_max = reports.iter().flat_map(|r| &r.timeline).map(|s| s.live).max().unwrap_or(1).max(1) as f64;
    let c_max = reports.iter().flat_map(|r| r.timeline.last()).map(|s| s.cost).fold(1e-9, f64::max);
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{pad}\" y=\"20\" font-size=\"14\">{title}</text>\n",
        2.0 * h + 60.0
    );
    let x = |t: f64| pad + (w - 2.0 * pad) * t / t_max;
    for (panel, (label, max)) in
        [("machines (solid: live, dashed: busy, dotted: idle)", m_max), ("cumulative cost $", c_max)]
            .into_iter()
            .enumerate()
    {
        let top = 40.0 + panel as f64 * (h + 10.0);
        let y = |v: f64| top + h - 20.0 - (h - 40.0) * v / max;
        let _ = writeln!(
            svg,
            "<rect x=\"{pad}\" y=\"{top}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n<text x=\"{}\" y=\"{}\">{label}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max:.0}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1} days</text>",
            w - 2.0 * pad,
            h - 20.0,
            pad + 5.0,
            top + 15.0,
            pad - 4.0,
            y(max) + 4.0,
            w - pad,
            top + h + 5.0,
            t_max / 86400.0
        );
        for (k, r) in reports.iter().enumerate() {
            let colour = colours[k % colours.len()];
            let series: Vec<Series> = if panel == 0 {
                vec![("", |s| s.live as f64), ("6,3", |s| s.busy as f64), ("1,3", |s| s.idle as f64)]
            } else {
                vec![("", |s| s.cost)]
            };
            for (dash, value) in series {
                // A step line; thinned to at most ~4000 points.
                let step = (r.timeline.len() / 4000).max(1);
                let mut d = String::new();
                let mut prev: Option<f64> = None;
                for s in r.timeline.iter().step_by(step) {
                    let (px, py) = (x(s.t), y(value(s)));
                    match prev {
                        None => {
                            let _ = write!(d, "M{px:.1},{py:.1}");
                        }
                        Some(_) => {
                            let _ = write!(d, " H{px:.1} V{py:.1}");
                        }
                    }
                    prev = Some(py);
                }
                let _ = writeln!(
                    svg,
                    "<path d=\"{d}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1\" stroke-dasharray=\"{dash}\"/>"
                );
            }
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>",
                w - pad - 150.0,
                top + 15.0 + 14.0 * k as f64,
                r.policy
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn main() {
    if let Err(e) = run() {
        eprintln!("costsim: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let config = Config { boot: Duration::from_secs(args.boot), ..Config::default() };
    let traces: Vec<(String, Vec<TraceRun>)> = match (&args.trace, args.family) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("failed to read {path}: {e}"))?;
            vec![(path.clone(), parse_trace(&text).map_err(|e| e.to_string())?)]
        }
        (None, Some(f)) => vec![(f.to_string(), generate(f, args.seed, args.days).map_err(|e| e.to_string())?)],
        (None, None) => Family::ALL
            .into_iter()
            .map(|f| generate(f, args.seed, args.days).map(|t| (f.to_string(), t)).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
    };
    let mut summary = String::new();
    let mut last = None;
    for (name, trace) in &traces {
        let (reports, bound) = evaluate(trace, &config);
        let title = format!("{name} (seed {}, {} days, boot {}s)", args.seed, args.days, args.boot);
        print!("{}", table(&title, &reports, &bound));
        let (auto, five, ski) = (find(&reports, "auto"), find(&reports, "fixed-5m"), find(&reports, "ski-rental"));
        let _ = writeln!(
            summary,
            "{name:<12} auto/bound {:.3}  auto/clairvoyant {:.3}  auto/fixed-5m {:.3}  auto/ski-rental {:.3}  p99 wait auto {:.0}s vs fixed-5m {:.0}s",
            auto.total_cost / bound.total_cost,
            auto.total_cost / find(&reports, "clairvoyant").total_cost,
            auto.total_cost / five.total_cost,
            auto.total_cost / ski.total_cost,
            auto.wait_p99,
            five.wait_p99
        );
        let _ = writeln!(
            summary,
            "{:<12} auto saved vs fixed-5m: ${:.2} measured, ${:.2} by the pool's own account ({} spells settled after their instance was gone, {} left out)",
            "",
            five.total_cost - auto.total_cost,
            auto.saved_vs_5m,
            auto.settled_later_vs_5m,
            auto.unsettled_vs_5m
        );
        println!();
        last = Some((title, reports));
    }
    print!("{summary}");
    if let (Some(path), Some((title, reports))) = (&args.plot, last) {
        let svg = plot(&[find(&reports, "fixed-5m"), find(&reports, "auto")], &title);
        std::fs::write(path, svg).map_err(|e| format!("failed to write {path}: {e}"))?;
        println!("plot: {path}");
    }
    Ok(())
}
