//! Table tests of the grammar (expected values checked against dstack 0.22.5 where the
//! grammars agree) and property tests of rendering.

use super::*;
use proptest::prelude::*;

const F: &str = "resources.test";

fn r<T: PartialOrd + Copy>(min: Option<T>, max: Option<T>) -> Range<T> {
    Range { min, max }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn gpu(vendor: Option<GpuVendor>, n: &[&str], count: Range<u32>, memory: Option<Range<f64>>) -> GpuSpec {
    GpuSpec { vendor, names: names(n), count, memory, total_memory: None, compute_capability: None }
}

/// Asserts an error names the field and token, and its reason contains `reason`.
fn assert_err<T: fmt::Debug>(input: &str, got: Result<T, SpecError>, token: &str, reason: &str) {
    let e = got.expect_err(&format!("{input:?} should be rejected"));
    assert_eq!(e.field, F, "field for {input:?}");
    assert_eq!(e.token, token, "token for {input:?} ({e})");
    assert!(e.reason.contains(reason), "reason for {input:?}: {:?} lacks {reason:?}", e.reason);
}

#[test]
fn an_error_names_the_value_as_written_when_the_token_had_spaces_in_it() {
    let spec = ResourcesSpec { cpu: Some(", 0".into()), ..Default::default() };
    let e = spec.resolve().unwrap_err();
    assert_eq!((e.field.as_str(), e.token.as_str()), ("resources.cpu", ", 0"));
    assert!(e.to_string().contains("resources.cpu \", 0\""), "{e}");
}

#[test]
#[rustfmt::skip]
fn cpu_accepted() {
    use CpuArch::*;
    let cases: &[(&str, Option<CpuArch>, Range<u32>)] = &[
        ("8", None, Range::exact(8)),
        ("2..", None, r(Some(2), None)),
        ("..16", None, r(None, Some(16))),
        ("4..8", None, r(Some(4), Some(8))),
        ("4..4", None, Range::exact(4)),
        ("0", None, Range::exact(0)),
        ("02", None, Range::exact(2)),
        ("arm:8..", Some(Arm), r(Some(8), None)),
        ("x86:4", Some(X86), Range::exact(4)),
        ("8..:arm", Some(Arm), r(Some(8), None)),
        ("ARM:4", Some(Arm), Range::exact(4)),
        ("X86:..4", Some(X86), r(None, Some(4))),
        ("x86_64:4", Some(X86), Range::exact(4)),
        ("amd64:4", Some(X86), Range::exact(4)),
        ("arm64:2..", Some(Arm), r(Some(2), None)),
        ("aarch64:2", Some(Arm), Range::exact(2)),
        ("arm", Some(Arm), DEFAULT_CPU_COUNT),
        (" 4 .. 8 ", None, r(Some(4), Some(8))),
        ("arm : 16", Some(Arm), Range::exact(16)),
        ("4294967295", None, Range::exact(u32::MAX)),
    ];
    for (input, arch, count) in cases {
        let got = parse_cpu(F, input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(got, CpuSpec { arch: *arch, count: *count }, "{input:?}");
    }
}

#[test]
#[rustfmt::skip]
fn cpu_rejected() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "", "empty CPU spec"),
        ("   ", "", "empty CPU spec"),
        ("..", "..", "empty range"),
        ("8..4", "8..4", "min 8 is greater than max 4"),
        ("-1", "-1", "negative"),
        ("-1..4", "-1", "negative"),
        ("1.5", "1.5", "not a whole number"),
        ("+2", "+2", "not a number"),
        ("2...4", ".4", "not a number"),
        ("2..4..8", "2..4..8", "more than one `..`"),
        ("4294967296", "4294967296", "too large"),
        ("arm:arm:2", "arm", "more than one CPU architecture"),
        ("x86:arm", "arm", "more than one CPU architecture"),
        ("2:4", "4", "more than one CPU count"),
        ("arm:", "arm:", "empty part"),
        (":4", ":4", "empty part"),
        ("risc:4", "risc", "unknown CPU architecture"),
        ("4cores", "4cores", "not a number"),
        ("four", "four", "unknown CPU architecture"),
        ("x86,arm:4", "x86,arm", "unknown CPU architecture"),
    ];
    for (input, token, reason) in cases {
        assert_err(input, parse_cpu(F, input), token, reason);
    }
}

#[test]
#[rustfmt::skip]
fn memory_accepted() {
    let cases: &[(&str, Range<f64>)] = &[
        ("8", Range::exact(8.0)),
        ("8GB", Range::exact(8.0)),
        ("8gb", Range::exact(8.0)),
        ("8Gb", Range::exact(8.0)),
        ("512MB", Range::exact(0.5)),
        ("1TB", Range::exact(1024.0)),
        ("1.5TB", Range::exact(1536.0)),
        ("0.5", Range::exact(0.5)),
        ("0", Range::exact(0.0)),
        ("8GB..", r(Some(8.0), None)),
        ("..16GB", r(None, Some(16.0))),
        ("8..16", r(Some(8.0), Some(16.0))),
        ("8..16GB", r(Some(8.0), Some(16.0))),
        ("8 GB .. 16 GB", r(Some(8.0), Some(16.0))),
        ("1TB..2048GB", r(Some(1024.0), Some(2048.0))),
        ("0.5GB..1TB", r(Some(0.5), Some(1024.0))),
        ("256mb..", r(Some(0.25), None)),
        ("1024MB..1GB", Range::exact(1.0)),
        ("64GB..256GB", r(Some(64.0), Some(256.0))),
    ];
    for (input, want) in cases {
        let got = parse_memory(F, input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(got, *want, "{input:?}");
    }
}

#[test]
#[rustfmt::skip]
fn memory_rejected() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "", "empty size"),
        ("..", "..", "empty range"),
        ("8XB", "8XB", "unknown unit `XB`"),
        ("8G", "8G", "unknown unit `G`"),
        ("8GiB", "8GiB", "unknown unit `GiB`"),
        ("8GB..16XB", "16XB", "unknown unit `XB`"),
        ("16GB..8GB", "16GB..8GB", "min 16GB is greater than max 8GB"),
        ("1TB..1000GB", "1TB..1000GB", "min 1024GB is greater than max 1000GB"),
        ("-8GB", "-8GB", "negative"),
        ("..-8", "-8", "negative"),
        ("1e3", "1e3", "unknown unit `e3`"),
        ("inf", "inf", "expected a number"),
        ("nan", "nan", "expected a number"),
        ("GB", "GB", "expected a number"),
        ("8.", "8.", "not a number"),
        (".5", ".5", "not a number"),
        ("8.5.1GB", "8.5.1GB", "not a number"),
        ("8,16", "8,16", "not a number"),
        ("8..16..32", "8..16..32", "more than one `..`"),
        ("8GB...", ".", "not a number"),
        ("1GB8", "1GB8", "unknown unit `GB8`"),
    ];
    for (input, token, reason) in cases {
        assert_err(input, parse_memory(F, input), token, reason);
    }
    let huge = format!("{}TB", "9".repeat(400));
    assert_err(&huge, parse_memory(F, &huge), &huge, "too large");
}

#[test]
#[rustfmt::skip]
fn gpu_accepted() {
    use GpuVendor::*;
    let any1 = DEFAULT_GPU_COUNT;
    let cases: Vec<(&str, GpuSpec)> = vec![
        ("A100:2", gpu(Some(Nvidia), &["A100"], Range::exact(2), None)),
        ("24GB..", gpu(None, &[], any1, Some(r(Some(24.0), None)))),
        ("A100,H100:80GB:1..2", gpu(Some(Nvidia), &["A100", "H100"], r(Some(1), Some(2)), Some(Range::exact(80.0)))),
        ("nvidia:24GB..", gpu(Some(Nvidia), &[], any1, Some(r(Some(24.0), None)))),
        ("H100:8", gpu(Some(Nvidia), &["H100"], Range::exact(8), None)),
        ("80GB", gpu(None, &[], any1, Some(Range::exact(80.0)))),
        ("A100:80GB:1", gpu(Some(Nvidia), &["A100"], Range::exact(1), Some(Range::exact(80.0)))),
        // Tokens in any order.
        ("80GB:A100:2", gpu(Some(Nvidia), &["A100"], Range::exact(2), Some(Range::exact(80.0)))),
        ("2:nvidia:A100", gpu(Some(Nvidia), &["A100"], Range::exact(2), None)),
        ("AMD:MI300X:8:192GB", gpu(Some(Amd), &["MI300X"], Range::exact(8), Some(Range::exact(192.0)))),
        // Counts.
        ("2", gpu(None, &[], Range::exact(2), None)),
        ("0", gpu(None, &[], Range::exact(0), None)),
        ("1..", gpu(None, &[], any1, None)),
        ("A100:..2", gpu(Some(Nvidia), &["A100"], r(None, Some(2)), None)),
        // Memory: any token with a letter that is not a name.
        ("..80GB", gpu(None, &[], any1, Some(r(None, Some(80.0))))),
        ("1..2GB", gpu(None, &[], any1, Some(r(Some(1.0), Some(2.0))))),
        ("0.5..1TB", gpu(None, &[], any1, Some(r(Some(0.5), Some(1024.0))))),
        ("A100 : 80 GB", gpu(Some(Nvidia), &["A100"], any1, Some(Range::exact(80.0)))),
        ("16384MB..", gpu(None, &[], any1, Some(r(Some(16.0), None)))),
        // Vendors, any case, with aliases.
        ("nvidia", gpu(Some(Nvidia), &[], any1, None)),
        ("tpu", gpu(Some(Tpu), &[], any1, None)),
        ("TPU:2", gpu(Some(Tpu), &[], Range::exact(2), None)),
        ("google", gpu(Some(Tpu), &[], any1, None)),
        ("Intel", gpu(Some(Intel), &[], any1, None)),
        ("tenstorrent", gpu(Some(Tenstorrent), &[], any1, None)),
        ("tt:2", gpu(Some(Tenstorrent), &[], Range::exact(2), None)),
        // Vendor inferred from known names, names kept as written.
        ("a100", gpu(Some(Nvidia), &["a100"], any1, None)),
        ("MI300X", gpu(Some(Amd), &["MI300X"], any1, None)),
        ("Gaudi2", gpu(Some(Intel), &["Gaudi2"], any1, None)),
        ("n150", gpu(Some(Tenstorrent), &["n150"], any1, None)),
        ("tt-galaxy-wh", gpu(Some(Tenstorrent), &["tt-galaxy-wh"], any1, None)),
        ("RTX4090:2", gpu(Some(Nvidia), &["RTX4090"], Range::exact(2), None)),
        ("v5p-8", gpu(Some(Tpu), &["v5p-8"], any1, None)),
        ("v5litepod-8", gpu(Some(Tpu), &["v5litepod-8"], any1, None)),
        ("tpu-v5p-8", gpu(Some(Tpu), &["v5p-8"], any1, None)),
        ("TPU-v6e-4:2", gpu(Some(Tpu), &["v6e-4"], Range::exact(2), None)),
        // A `tpu-` prefix means TPU even for unknown versions (dstack: vendor unset).
        ("tpu-foo", gpu(Some(Tpu), &["foo"], any1, None)),
        // Unknown names are accepted; mixed or unknown vendors leave the vendor unset.
        ("A100x", gpu(None, &["A100x"], any1, None)),
        ("H100,MI300X", gpu(None, &["H100", "MI300X"], any1, None)),
        ("H100,UNKNOWN", gpu(None, &["H100", "UNKNOWN"], any1, None)),
        ("tpu-v5p-8,A100", gpu(None, &["v5p-8", "A100"], any1, None)),
        ("MI400X", gpu(None, &["MI400X"], any1, None)),
        ("v5p", gpu(None, &["v5p"], any1, None)),
        ("H100_SXM", gpu(None, &["H100_SXM"], any1, None)),
        // Nothing is inferred when no GPU is asked for (as in dstack).
        ("MI300X:0", gpu(None, &["MI300X"], Range::exact(0), None)),
        ("nvidia:A100:..0", gpu(Some(Nvidia), &["A100"], r(None, Some(0)), None)),
        // An explicit vendor wins over inference (as in dstack).
        ("amd:A100", gpu(Some(Amd), &["A100"], any1, None)),
    ];
    for (input, want) in cases {
        let got = parse_gpu(F, input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(got, want, "{input:?}");
    }
}

#[test]
#[rustfmt::skip]
fn gpu_rejected() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "", "empty GPU spec"),
        (":", ":", "empty part"),
        ("A100:", "A100:", "empty part"),
        ("A100::2", "A100::2", "empty part"),
        ("A100:2:3", "3", "more than one GPU count"),
        ("2:1..", "1..", "more than one GPU count"),
        ("A100:H100", "H100", "more than one list of GPU names"),
        ("24GB:40GB", "40GB", "more than one GPU memory"),
        ("nvidia:amd", "amd", "more than one GPU vendor"),
        ("tpu:google", "google", "more than one GPU vendor"),
        ("1.5", "1.5", "GPU memory needs a unit"),
        ("A100,,H100", "A100,,H100", "empty GPU name"),
        ("A100,", "A100,", "empty GPU name"),
        ("8XB", "8XB", "unknown unit `XB`"),
        ("24GB..8XB", "8XB", "unknown unit `XB`"),
        ("A100$", "A100$", "invalid GPU name"),
        ("A100..", "A100..", "invalid GPU name"),
        ("H100;rm", "H100;rm", "invalid GPU name"),
        ("A100,4090", "4090", "start with a letter"),
        ("tpu-", "tpu-", "empty TPU name"),
        ("-1", "-1", "negative"),
        ("..", "..", "empty range"),
        ("A100:..", "..", "empty range"),
        ("2..1", "2..1", "min 2 is greater than max 1"),
        ("80GB..40GB", "80GB..40GB", "min 80GB is greater than max 40GB"),
        ("$5", "$5", "unknown GPU token"),
        ("8GB$", "8GB$", "unknown GPU token"),
        ("A100:#", "#", "unknown GPU token"),
        ("2..4..8", "2..4..8", "more than one `..`"),
        ("+2", "+2", "not a number"),
        ("99999999999", "99999999999", "too large"),
    ];
    for (input, token, reason) in cases {
        assert_err(input, parse_gpu(F, input), token, reason);
    }
}

#[test]
#[rustfmt::skip]
fn compute_capability() {
    let ok: &[(&str, (u32, u32))] =
        &[("8.0", (8, 0)), ("9.0", (9, 0)), ("7.5", (7, 5)), (" 8.0 ", (8, 0)), ("8 . 6", (8, 6)), ("12.10", (12, 10))];
    for (input, want) in ok {
        assert_eq!(parse_compute_capability(F, input), Ok(*want), "{input:?}");
    }
    let bad: &[(&str, &str, &str)] = &[
        ("", "", "MAJOR.MINOR"),
        ("8", "8", "MAJOR.MINOR"),
        ("8.0.1", "8.0.1", "MAJOR.MINOR"),
        ("8.", "8.", "MAJOR.MINOR"),
        (".0", ".0", "MAJOR.MINOR"),
        ("x.y", "x.y", "MAJOR.MINOR"),
        ("8 0.0", "8 0.0", "MAJOR.MINOR"),
        ("-1.0", "-1.0", "negative"),
        ("99999999999.0", "99999999999.0", "too large"),
    ];
    for (input, token, reason) in bad {
        assert_err(input, parse_compute_capability(F, input), token, reason);
    }
}

fn spec() -> ResourcesSpec {
    ResourcesSpec::default()
}

#[test]
fn resolve_applies_defaults() {
    let req = spec().resolve().unwrap();
    assert_eq!(
        req,
        Requirements {
            cpu: CpuSpec { arch: None, count: r(Some(2), None) },
            memory: r(Some(8.0), None),
            disk: Some(r(Some(100.0), None)),
            gpu: None,
        }
    );
    assert_eq!(req.render(), "cpu=2.. mem=8GB.. disk=100GB..");
}

#[test]
fn resolve_parses_every_field() {
    let s = ResourcesSpec {
        cpu: Some("arm:16..".into()),
        memory: Some("64GB..256GB".into()),
        disk: Some("1TB".into()),
        gpu: Some("A100:80GB:2".into()),
        gpu_total_memory: Some("160GB..".into()),
        compute_capability: Some("8.0".into()),
    };
    let req = s.resolve().unwrap();
    assert_eq!(req.cpu, CpuSpec { arch: Some(CpuArch::Arm), count: r(Some(16), None) });
    assert_eq!(req.memory, r(Some(64.0), Some(256.0)));
    assert_eq!(req.disk, Some(Range::exact(1024.0)));
    let g = req.gpu.clone().unwrap();
    assert_eq!(g.vendor, Some(GpuVendor::Nvidia));
    assert_eq!(g.names, names(&["A100"]));
    assert_eq!(g.count, Range::exact(2));
    assert_eq!(g.memory, Some(Range::exact(80.0)));
    assert_eq!(g.total_memory, Some(r(Some(160.0), None)));
    assert_eq!(g.compute_capability, Some((8, 0)));
    assert_eq!(
        req.render(),
        "cpu=arm:16.. mem=64GB..256GB disk=1024GB gpu=A100:80GB:2 gpuTotalMemory=160GB.. computeCapability=8.0"
    );
}

#[test]
fn resolve_gpu_from_total_memory_or_compute_capability() {
    let s = ResourcesSpec { gpu_total_memory: Some("160GB..".into()), ..spec() };
    let g = s.resolve().unwrap().gpu.unwrap();
    assert_eq!(g.count, DEFAULT_GPU_COUNT);
    assert_eq!(g.total_memory, Some(r(Some(160.0), None)));
    assert_eq!((g.vendor, g.names.len(), g.memory), (None, 0, None));

    let s = ResourcesSpec { compute_capability: Some("9.0".into()), ..spec() };
    let req = s.resolve().unwrap();
    assert_eq!(req.gpu.as_ref().unwrap().compute_capability, Some((9, 0)));
    assert_eq!(req.render(), "cpu=2.. mem=8GB.. disk=100GB.. gpu=1.. computeCapability=9.0");
}

#[test]
#[rustfmt::skip]
fn resolve_errors_name_the_field() {
    let cases: Vec<(ResourcesSpec, &str, &str)> = vec![
        (ResourcesSpec { cpu: Some("risc:4".into()), ..spec() }, "resources.cpu", "risc"),
        (ResourcesSpec { memory: Some("8XB".into()), ..spec() }, "resources.memory", "8XB"),
        (ResourcesSpec { disk: Some("..".into()), ..spec() }, "resources.disk", ".."),
        (ResourcesSpec { gpu: Some("A100:2:3".into()), ..spec() }, "resources.gpu", "3"),
        (ResourcesSpec { gpu_total_memory: Some("-1GB".into()), ..spec() }, "resources.gpuTotalMemory", "-1GB"),
        (ResourcesSpec { compute_capability: Some("8".into()), ..spec() }, "resources.computeCapability", "8"),
    ];
    for (s, field, token) in cases {
        let e = s.resolve().unwrap_err();
        assert_eq!((e.field.as_str(), e.token.as_str()), (field, token), "{s:?}");
    }
    let e = ResourcesSpec { gpu: Some("A100x:2:2".into()), ..spec() }.resolve().unwrap_err();
    assert_eq!(e.to_string(), r#"invalid resources.gpu "2": more than one GPU count in the spec"#);
}

#[test]
#[rustfmt::skip]
fn render_examples() {
    let cases: &[(&str, &str)] = &[
        ("A100:80GB", "gpu=A100:80GB:1.."),
        ("24GB..", "gpu=24GB..:1.."),
        ("nvidia:24GB..", "gpu=nvidia:24GB..:1.."),
        ("A100,H100:80GB:1..2", "gpu=A100,H100:80GB:1..2"),
        ("tpu-v5p-8", "gpu=v5p-8:1.."),
        ("tpu-foo:2", "gpu=tpu:foo:2"),
        ("amd:A100", "gpu=amd:A100:1.."),
        ("0", "gpu=0"),
        ("nvidia:A100:0", "gpu=nvidia:A100:0"),
    ];
    for (input, want) in cases {
        let req = ResourcesSpec { gpu: Some(input.to_string()), ..spec() }.resolve().unwrap();
        assert_eq!(req.render(), format!("cpu=2.. mem=8GB.. disk=100GB.. {want}"), "{input:?}");
    }
    let req = Requirements {
        cpu: CpuSpec { arch: Some(CpuArch::X86), count: r(None, Some(16)) },
        memory: r(Some(0.5), Some(1.5)),
        disk: None,
        gpu: None,
    };
    assert_eq!(req.render(), "cpu=x86:..16 mem=0.5GB..1.5GB");
    assert_eq!(req.to_string(), req.render());
}

#[test]
fn range_display() {
    assert_eq!(Range::<u32>::exact(8).to_string(), "8");
    assert_eq!(Range::<u32>::at_least(2).to_string(), "2..");
    assert_eq!(r::<u32>(None, Some(16)).to_string(), "..16");
    assert_eq!(r::<u32>(Some(4), Some(8)).to_string(), "4..8");
    assert_eq!(Range::<u32>::any().to_string(), "..");
    assert_eq!(Range::<f64>::exact(80.0).to_string(), "80GB");
    assert_eq!(Range::<f64>::at_least(0.25).to_string(), "0.25GB..");
    assert_eq!(r(Some(1024.0), Some(2048.0)).to_string(), "1024GB..2048GB");
    assert_eq!(r::<f64>(None, Some(1e-7)).to_string(), "..0.0000001GB");
}

#[test]
fn schema_has_descriptions_and_patterns() {
    let schema = serde_json::to_value(schemars::schema_for!(ResourcesSpec)).unwrap();
    let props = &schema["properties"];
    for field in ["cpu", "memory", "disk", "gpu", "gpuTotalMemory", "computeCapability"] {
        let p = &props[field];
        assert!(p["description"].as_str().is_some_and(|d| d.len() > 40), "{field}: {p}");
        assert!(p["pattern"].as_str().is_some(), "{field}: {p}");
    }
}

/// Every input the parser accepts also passes the field's schema pattern (the pattern
/// is never stricter than the parser).
#[test]
fn patterns_admit_everything_the_parser_accepts() {
    let schema = serde_json::to_value(schemars::schema_for!(ResourcesSpec)).unwrap();
    let pattern = |field: &str| schema["properties"][field]["pattern"].as_str().unwrap().to_string();
    let check = |field: &str, inputs: &[&str]| {
        let p = pattern(field);
        for input in inputs {
            assert!(matches_pattern(&p, input), "{field}: {input:?} accepted by the parser but not by {p}");
        }
    };
    check("cpu", &["8", "2..", "arm:8..", "x86_64 : 4", " 4 .. 8 ", "AARCH64:2"]);
    check("memory", &["8", "8GB", "512mb..", "8 GB .. 16 GB", "0.5TB"]);
    check("disk", &["100GB..", "1TB..2TB"]);
    check("gpuTotalMemory", &["160GB.."]);
    check(
        "gpu",
        &[
            "A100:2",
            "24GB..",
            "A100,H100:80GB:1..2",
            "nvidia:24GB..",
            "tpu-v5p-8",
            "tt-galaxy-wh",
            "H100_SXM",
            "A100 : 80 GB",
        ],
    );
    check("computeCapability", &["8.0", " 8.0 ", "8 . 6", "12.10"]);
    // And it rejects some obvious garbage.
    assert!(!matches_pattern(&pattern("cpu"), "8; rm -rf"));
    assert!(!matches_pattern(&pattern("memory"), "8GB:16GB"));
    assert!(!matches_pattern(&pattern("gpu"), "A100$"));
    assert!(!matches_pattern(&pattern("computeCapability"), "8"));
}

/// A tiny matcher for the patterns used here: `^`, `$`, `\s*`, one character class with
/// `+`, or a literal/`[0-9]+` sequence. Enough to check the schema's patterns without a
/// regex dependency.
fn matches_pattern(pattern: &str, input: &str) -> bool {
    let body = pattern.strip_prefix('^').and_then(|p| p.strip_suffix('$')).expect("anchored pattern");
    let items = parse_items(body);
    match_items(&items, input.as_bytes())
}

#[derive(Debug)]
enum Item {
    /// A set of accepted bytes, and whether it repeats (`+`: 1.., `*`: 0..).
    Class(Vec<u8>, usize),
}

fn parse_items(p: &str) -> Vec<Item> {
    let b = p.as_bytes();
    let mut items = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let mut set = Vec::new();
        if b[i] == b'[' {
            i += 1;
            while b[i] != b']' {
                if b[i] == b'\\' && b[i + 1] == b's' {
                    set.extend_from_slice(b" \t\n\r\x0c");
                    i += 2;
                } else if i + 2 < b.len() && b[i + 1] == b'-' && b[i + 2] != b']' {
                    set.extend(b[i]..=b[i + 2]);
                    i += 3;
                } else {
                    set.push(b[i]);
                    i += 1;
                }
            }
            i += 1;
        } else if b[i] == b'\\' {
            match b[i + 1] {
                b's' => set.extend_from_slice(b" \t\n\r\x0c"),
                c => set.push(c),
            }
            i += 2;
        } else {
            set.push(b[i]);
            i += 1;
        }
        let min = match b.get(i) {
            Some(b'+') => {
                i += 1;
                1
            }
            Some(b'*') => {
                i += 1;
                0
            }
            _ => usize::MAX,
        };
        items.push(Item::Class(set, min));
    }
    items
}

fn match_items(items: &[Item], s: &[u8]) -> bool {
    let Some((Item::Class(set, min), rest)) = items.split_first() else {
        return s.is_empty();
    };
    if *min == usize::MAX {
        return s.first().is_some_and(|c| set.contains(c)) && match_items(rest, &s[1..]);
    }
    let run = s.iter().take_while(|c| set.contains(c)).count();
    (*min..=run).any(|n| match_items(rest, &s[n..]))
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

fn count_range() -> impl Strategy<Value = Range<u32>> {
    (any::<Option<u32>>(), any::<Option<u32>>()).prop_filter("a bound", |(a, b)| a.is_some() || b.is_some()).prop_map(
        |(a, b)| match (a, b) {
            (Some(a), Some(b)) => r(Some(a.min(b)), Some(a.max(b))),
            (a, b) => r(a, b),
        },
    )
}

fn size() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_map(f64::abs).prop_filter("finite", |v| v.is_finite()),
        (0u32..100_000).prop_map(f64::from),
        (0u32..100_000, 0u32..4).prop_map(|(n, k)| f64::from(n) / f64::from(10u32.pow(k))),
    ]
}

fn size_range() -> impl Strategy<Value = Range<f64>> {
    (proptest::option::of(size()), proptest::option::of(size()))
        .prop_filter("a bound", |(a, b)| a.is_some() || b.is_some())
        .prop_map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => r(Some(a.min(b)), Some(a.max(b))),
            (a, b) => r(a, b),
        })
}

const GPU_NAMES: &[&str] =
    &["A100", "H100", "a10g", "MI300X", "v5p-8", "Gaudi2", "n150", "A100x", "Foo_1", "tt-galaxy-wh"];

fn gpu_spec() -> impl Strategy<Value = GpuSpec> {
    let vendor = proptest::option::of(prop_oneof![
        Just(GpuVendor::Nvidia),
        Just(GpuVendor::Amd),
        Just(GpuVendor::Tpu),
        Just(GpuVendor::Intel),
        Just(GpuVendor::Tenstorrent),
    ]);
    let names = proptest::sample::subsequence(GPU_NAMES, 0..4).prop_shuffle();
    (vendor, names, count_range(), proptest::option::of(size_range())).prop_map(|(vendor, names, count, memory)| {
        let names: Vec<String> = names.into_iter().map(String::from).collect();
        // Parsing always infers the vendor of known names; generate only such specs.
        let vendor = vendor.or_else(|| if count.max == Some(0) { None } else { infer_vendor(&names) });
        GpuSpec { vendor, names, count, memory, total_memory: None, compute_capability: None }
    })
}

proptest! {
    #[test]
    fn count_range_renders_and_parses_back(range in count_range()) {
        prop_assert_eq!(parse_count_range(F, &range.to_string())?, range);
    }

    #[test]
    fn size_range_renders_and_parses_back(range in size_range()) {
        prop_assert_eq!(parse_memory(F, &range.to_string())?, range);
    }

    #[test]
    fn sizes_with_units_are_binary(n in 0u32..1_000_000, unit in prop_oneof![Just("MB"), Just("gb"), Just("Tb"), Just("")]) {
        let gb = parse_memory(F, &format!("{n}{unit}"))?.min.unwrap();
        let factor = match unit.to_ascii_lowercase().as_str() { "mb" => 1.0 / 1024.0, "tb" => 1024.0, _ => 1.0 };
        prop_assert_eq!(gb, f64::from(n) * factor);
        prop_assert_eq!(parse_memory(F, &Range::exact(gb).to_string())?, Range::exact(gb));
    }

    #[test]
    fn cpu_spec_renders_and_parses_back(
        arch in proptest::option::of(prop_oneof![Just(CpuArch::X86), Just(CpuArch::Arm)]),
        count in count_range(),
    ) {
        let spec = CpuSpec { arch, count };
        prop_assert_eq!(parse_cpu(F, &spec.to_string())?, spec);
    }

    #[test]
    fn gpu_spec_renders_and_parses_back(spec in gpu_spec()) {
        prop_assert_eq!(parse_gpu(F, &spec.to_string())?, spec);
    }

    #[test]
    fn patterns_never_reject_what_the_parser_accepts(
        cpu in "(arm|X86_64|aarch64)?( ?: ?)?[0-9]{0,2} ?(\\.\\.)? ?[0-9]{0,2}\t?",
        size in "[0-9]{0,3}(\\.[0-9])? ?(GB|mb|Tb|XB)?( ?\\.\\. ?([0-9]{1,3}(GB|MB)?)?)?",
        gpu in "((nvidia|TPU|tpu-v5p-8|A100|H100_x|MI300X|24GB|1\\.\\.2|\\.\\.80GB|2|-1)( ?[:,] ?)?){1,4}",
        cc in "[ \t]?[0-9]{0,2} ?\\.? ?[0-9]{0,2} ?",
    ) {
        let schema = serde_json::to_value(schemars::schema_for!(ResourcesSpec)).unwrap();
        let pattern = |field: &str| schema["properties"][field]["pattern"].as_str().unwrap().to_string();
        if parse_cpu(F, &cpu).is_ok() {
            prop_assert!(matches_pattern(&pattern("cpu"), &cpu), "cpu {:?}", cpu);
        }
        if parse_memory(F, &size).is_ok() {
            for field in ["memory", "disk", "gpuTotalMemory"] {
                prop_assert!(matches_pattern(&pattern(field), &size), "{} {:?}", field, size);
            }
        }
        if parse_gpu(F, &gpu).is_ok() {
            prop_assert!(matches_pattern(&pattern("gpu"), &gpu), "gpu {:?}", gpu);
        }
        if parse_compute_capability(F, &cc).is_ok() {
            prop_assert!(matches_pattern(&pattern("computeCapability"), &cc), "cc {:?}", cc);
        }
    }

    #[test]
    fn parsers_never_panic(s in "\\PC{0,24}") {
        let _ = parse_cpu(F, &s);
        let _ = parse_memory(F, &s);
        let _ = parse_gpu(F, &s);
        let _ = parse_compute_capability(F, &s);
    }

    #[test]
    fn parsers_never_panic_on_grammar_like_text(s in "[0-9a-zA-Z.:,_ -]{0,16}") {
        for result in [parse_cpu(F, &s).err(), parse_memory(F, &s).err(), parse_gpu(F, &s).err()].into_iter().flatten() {
            prop_assert_eq!(&result.field, F);
            prop_assert!(!result.reason.is_empty());
        }
    }

    #[test]
    fn accepted_ranges_are_ordered(s in "[0-9]{0,3}(\\.\\.)?[0-9]{0,3}(GB|MB)?") {
        if let Ok(range) = parse_memory(F, &s) {
            prop_assert!(range.min.is_some() || range.max.is_some());
            if let (Some(a), Some(b)) = (range.min, range.max) { prop_assert!(a <= b); }
        }
    }
}
