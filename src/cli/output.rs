//! What the plugin prints: aligned tables for people, and the JSON contract of
//! `kubectl pool offers -o json` for programs (documented in the README; keep it stable).

use serde_json::{json, Value};

use crate::api::offer::Offer;
use crate::api::policy::SpotPolicy;
use crate::api::resources::{Range, Requirements};
use crate::core::policy::EffectivePolicy;

/// Renders rows under a header, columns separated by three spaces, as kubectl does.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   ", w = *w));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `$1.006` style price; enough digits for cheap spot machines.
pub fn price(p: f64) -> String {
    let s = format!("{p:.4}");
    let s = s.trim_end_matches('0');
    let s = if s.ends_with('.') { format!("{s}00") } else { s.to_string() };
    let s = match s.split_once('.') {
        Some((int, frac)) if frac.len() < 2 => format!("{int}.{frac:0<2}"),
        _ => s,
    };
    format!("${s}")
}

/// The offers table of `offers` and `add`.
pub fn offers_table(offers: &[Offer]) -> String {
    let rows: Vec<Vec<String>> = offers
        .iter()
        .enumerate()
        .map(|(i, o)| {
            vec![
                (i + 1).to_string(),
                o.backend.clone(),
                o.region.clone(),
                o.instance_type.clone(),
                o.resources_summary(),
                if o.spot { "spot" } else { "on-demand" }.to_string(),
                price(o.price),
            ]
        })
        .collect();
    table(&["#", "BACKEND", "REGION", "INSTANCE TYPE", "RESOURCES", "SPOT", "PRICE"], &rows)
}

fn range_u32(r: &Range<u32>) -> Value {
    json!({"min": r.min, "max": r.max})
}

fn range_f64(r: Option<&Range<f64>>) -> Value {
    match r {
        Some(r) => json!({"min": r.min, "max": r.max}),
        None => json!({"min": null, "max": null}),
    }
}

fn spot_policy(p: SpotPolicy) -> &'static str {
    match p {
        SpotPolicy::Spot => "spot",
        SpotPolicy::OnDemand => "on-demand",
        SpotPolicy::Auto => "auto",
        SpotPolicy::SpotThenOnDemand => "spot-then-on-demand",
    }
}

/// The fully resolved requirement, as in the JSON contract.
pub fn requirements_json(req: &Requirements, policy: &EffectivePolicy) -> Value {
    let gpu = req.gpu.as_ref().map(|g| {
        json!({
            "names": g.names,
            "vendor": g.vendor.map(|v| v.to_string()),
            "count": range_u32(&g.count),
            "memory": range_f64(g.memory.as_ref()),
            "totalMemory": range_f64(g.total_memory.as_ref()),
            "computeCapability": g.compute_capability.map(|(a, b)| format!("{a}.{b}")),
        })
    });
    json!({
        "cpu": range_u32(&req.cpu.count),
        "cpuArch": req.cpu.arch.map(|a| a.to_string()),
        "memory": range_f64(Some(&req.memory)),
        "disk": range_f64(req.disk.as_ref()),
        "gpu": gpu,
        "spotPolicy": spot_policy(policy.spot_policy),
        "maxPrice": policy.max_price,
    })
}

/// One offer, as in the JSON contract (GB, $/hour).
pub fn offer_json(o: &Offer) -> Value {
    json!({
        "backend": o.backend,
        "region": o.region,
        "instanceType": o.instance_type,
        "cpu": o.cpu,
        "memory": o.memory,
        "disk": o.disk,
        "gpuCount": o.gpu_count,
        "gpuName": o.gpu_name,
        "gpuMemory": o.gpu_memory,
        "spot": o.spot,
        "price": o.price,
    })
}

/// `{"requirements": {...}, "offers": [...]}`.
pub fn offers_json(req: &Requirements, policy: &EffectivePolicy, offers: &[Offer]) -> Value {
    json!({
        "requirements": requirements_json(req, policy),
        "offers": offers.iter().map(offer_json).collect::<Vec<_>>(),
    })
}

/// `3m`, `2h5m`, `4d1h`: how long ago, for IDLE FOR and CREATED columns.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => {
            let m = (s % 3600) / 60;
            if m == 0 {
                format!("{}h", s / 3600)
            } else {
                format!("{}h{}m", s / 3600, m)
            }
        }
        _ => {
            let h = (s % 86_400) / 3600;
            if h == 0 {
                format!("{}d", s / 86_400)
            } else {
                format!("{}d{}h", s / 86_400, h)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_trailing_space() {
        let t = table(&["A", "LONG HEADER", "C"], &[vec!["xyz".into(), "1".into(), "".into()]]);
        assert_eq!(t, "A     LONG HEADER   C\nxyz   1\n");
    }

    #[test]
    fn prices_keep_cents_and_small_fractions() {
        assert_eq!(price(1.006), "$1.006");
        assert_eq!(price(2.0), "$2.00");
        assert_eq!(price(0.5), "$0.50");
        assert_eq!(price(0.0123), "$0.0123");
        assert_eq!(price(32.77), "$32.77");
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(185), "3m");
        assert_eq!(age(7500), "2h5m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(90_000), "1d1h");
        assert_eq!(age(-3), "0s");
    }
}
