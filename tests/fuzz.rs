//! Property fuzzing at scale of what users and catalogs write: the resource grammar
//! (every field of `resources`), durations, and catalog rows. Over generated and mangled
//! input: nothing panics; what parses renders and parses back to the same value; what
//! does not parse is refused with an error that names the field (the column, the line)
//! and the value.
//!
//! `cargo test --release --test fuzz` runs proptest's default 256 cases per property;
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz` is the documented run at scale.

use std::time::Duration;

use kpool::api::duration::{format_duration, parse_duration};
use kpool::api::resources::{Requirements, ResourcesSpec};
use kpool::backends::catalog::{Catalog, CatalogError, COLUMNS};
use proptest::prelude::*;

/// Tokens of the resource grammar, so generated strings are often close to valid.
fn grammar_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("A100"),
        Just("h100"),
        Just("v5p-8"),
        Just("nvidia"),
        Just("amd"),
        Just("tpu"),
        Just("arm"),
        Just("x86_64"),
        Just("80GB"),
        Just("24gb"),
        Just("512MB"),
        Just("1TB"),
        Just("0"),
        Just("2"),
        Just("16"),
        Just("0.5"),
        Just("8.0"),
        Just(".."),
        Just(":"),
        Just(","),
        Just(" "),
        Just("-1"),
        Just("99999999999"),
        Just("1e3"),
        Just("NaN"),
    ];
    prop_oneof![
        proptest::collection::vec(token, 0..7).prop_map(|t| t.concat()),
        "[ a-zA-Z0-9_.,:-]{0,20}",
        "\\PC{0,16}",
    ]
}

fn field() -> impl Strategy<Value = Option<String>> {
    proptest::option::weighted(0.6, grammar_soup())
}

fn resources() -> impl Strategy<Value = ResourcesSpec> {
    (field(), field(), field(), field(), field(), field()).prop_map(|(cpu, memory, disk, gpu, total, cc)| {
        ResourcesSpec { cpu, memory, disk, gpu, gpu_total_memory: total, compute_capability: cc }
    })
}

/// The fields a resolved requirement renders to, one per `resources` field.
fn rendered(req: &Requirements) -> ResourcesSpec {
    let gpu = req.gpu.as_ref();
    ResourcesSpec {
        cpu: Some(req.cpu.to_string()),
        memory: Some(req.memory.to_string()),
        disk: req.disk.as_ref().map(|d| d.to_string()),
        gpu: gpu.map(|g| g.to_string()),
        gpu_total_memory: gpu.and_then(|g| g.total_memory.as_ref()).map(|m| m.to_string()),
        compute_capability: gpu.and_then(|g| g.compute_capability).map(|(a, b)| format!("{a}.{b}")),
    }
}

/// The value of `resources.<name>`, by the field name an error gives.
fn value_of<'a>(spec: &'a ResourcesSpec, field: &str) -> Option<&'a str> {
    match field {
        "resources.cpu" => spec.cpu.as_deref(),
        "resources.memory" => spec.memory.as_deref(),
        "resources.disk" => spec.disk.as_deref(),
        "resources.gpu" => spec.gpu.as_deref(),
        "resources.gpuTotalMemory" => spec.gpu_total_memory.as_deref(),
        "resources.computeCapability" => spec.compute_capability.as_deref(),
        _ => None,
    }
}

/// One valid catalog row, by column.
#[derive(Clone, Debug)]
struct RowSpec {
    fields: [String; 14],
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0u32..100_000).prop_map(f64::from),
        (0u64..10_000_000, 0u32..5).prop_map(|(n, k)| n as f64 / 10f64.powi(k as i32))
    ]
}

fn row() -> impl Strategy<Value = RowSpec> {
    (
        ("[a-z][a-z0-9.]{0,12}", "[a-z][a-z0-9-]{0,12}", number(), 0u32..512, number()),
        (0u32..9, proptest::option::of("[A-Z][A-Za-z0-9]{0,7}"), proptest::option::of(number()), any::<bool>()),
        (
            proptest::option::of(number()),
            proptest::option::of(prop_oneof![Just("nvidia"), Just("amd"), Just("google"), Just("intel")]),
            proptest::option::of(prop_oneof![Just("x86"), Just("arm")]),
            prop_oneof![Just(""), Just("{\"a\": [1, 2]}"), Just("[]")],
        ),
    )
        .prop_map(
            |((name, location, price, cpu, memory), (gpus, gpu_name, gpu_mem, spot), (disk, vendor, arch, data))| {
                let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
                RowSpec {
                    fields: [
                        name,
                        location,
                        price.to_string(),
                        cpu.to_string(),
                        memory.to_string(),
                        gpus.to_string(),
                        gpu_name.unwrap_or_default(),
                        opt(gpu_mem),
                        if spot { "True".into() } else { "False".into() },
                        opt(disk),
                        vendor.unwrap_or_default().to_string(),
                        String::new(),
                        arch.unwrap_or_default().to_string(),
                        data.to_string(),
                    ],
                }
            },
        )
}

fn csv_of(rows: &[RowSpec]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(COLUMNS).unwrap();
    for r in rows {
        w.write_record(&r.fields).unwrap();
    }
    String::from_utf8(w.into_inner().unwrap()).unwrap()
}

fn col(name: &str) -> usize {
    COLUMNS.iter().position(|c| *c == name).unwrap()
}

proptest! {
    #[test]
    fn resources_resolve_render_and_resolve_back_or_name_the_field_and_value(spec in resources()) {
        match spec.resolve() {
            Ok(req) => {
                let again = rendered(&req).resolve();
                prop_assert_eq!(again.as_ref(), Ok(&req), "rendered as {:?}", rendered(&req));
            }
            Err(e) => {
                let value = value_of(&spec, &e.field);
                prop_assert!(value.is_some(), "error names no field that was given: {:?}", e);
                prop_assert!(value.unwrap().contains(e.token.trim()), "token {:?} is not in {:?}", e.token, value);
                prop_assert!(e.to_string().contains(&e.field));
            }
        }
    }

    #[test]
    fn durations_parse_format_and_parse_back_or_name_the_value(s in prop_oneof![
        "[0-9 smhdw]{0,12}",
        "[0-9]{1,25}[smhdw]?",
        "\\PC{0,16}",
    ]) {
        match parse_duration("spec.idleDuration", &s) {
            Ok(d) => prop_assert_eq!(parse_duration("f", &format_duration(d))?, Duration::from_secs(d.as_secs())),
            Err(e) => {
                prop_assert_eq!(&e.field, "spec.idleDuration");
                prop_assert!(s.contains(e.token.as_str()), "token {:?} is not in {:?}", e.token, s);
            }
        }
    }

    #[test]
    fn catalog_rows_parse_to_their_values(rows in proptest::collection::vec(row(), 1..6)) {
        let offers = Catalog::parse("aws", "b", &csv_of(&rows))?;
        prop_assert_eq!(offers.len(), rows.len());
        for (o, r) in offers.iter().zip(&rows) {
            let f = |c: &str| r.fields[col(c)].clone();
            prop_assert_eq!(&o.instance_type, &f("instance_name"));
            prop_assert_eq!(&o.region, &f("location"));
            prop_assert_eq!(o.price.to_string(), f("price"));
            prop_assert_eq!(o.memory.to_string(), f("memory"));
            prop_assert_eq!(o.cpu.to_string(), f("cpu"));
            prop_assert_eq!(o.gpu_count.to_string(), f("gpu_count"));
            prop_assert_eq!(o.spot, f("spot") == "True");
            prop_assert_eq!(o.disk.map(|d| d.to_string()).unwrap_or_default(), f("disk_size"));
            prop_assert_eq!(o.gpu_name.clone().unwrap_or_default(), f("gpu_name"));
        }
    }

    #[test]
    fn mangled_catalog_rows_are_refused_naming_line_column_and_value(
        rows in proptest::collection::vec(row(), 1..4),
        at in any::<prop::sample::Index>(),
        column in 0usize..14,
        junk in prop_oneof!["\\PC{0,12}", "[-0-9.eE+a-z ]{0,8}", Just("nan".to_string()), Just("-1".to_string())],
    ) {
        let mut rows = rows;
        let k = at.index(rows.len());
        rows[k].fields[column] = junk.clone();
        match Catalog::parse("aws", "b", &csv_of(&rows)) {
            Ok(offers) => prop_assert_eq!(offers.len(), rows.len()),
            Err(CatalogError::InvalidField { file, line, column: named, value, .. }) => {
                prop_assert!(file.contains("aws"), "file {:?}", file);
                // Line 1 is the header; the mangled row is line k + 2.
                prop_assert_eq!(line, k as u64 + 2);
                prop_assert_eq!(named, COLUMNS[column]);
                let v = value.trim_end_matches('…');
                prop_assert!(junk.trim().starts_with(v), "value {:?} is not the field {:?}", value, junk);
            }
            Err(e) => prop_assert!(e.to_string().contains("aws") && e.to_string().contains("line"), "{}", e),
        }
    }
}
