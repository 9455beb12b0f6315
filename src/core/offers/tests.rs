use super::*;
use crate::api::resources::{CpuSpec, Range};
use crate::core::policy::Origin;

/// No constraint at all.
pub(crate) fn any_req() -> Requirements {
    Requirements { cpu: CpuSpec { arch: None, count: Range::any() }, memory: Range::any(), disk: None, gpu: None }
}

/// A GPU requirement with dstack's default count `1..` and nothing else.
fn gpu_spec() -> GpuSpec {
    GpuSpec {
        vendor: None,
        names: vec![],
        count: Range::at_least(1),
        memory: None,
        total_memory: None,
        compute_capability: None,
    }
}

fn with_gpu(gpu: GpuSpec) -> Requirements {
    Requirements { gpu: Some(gpu), ..any_req() }
}

/// Spot or on-demand, no price limit, no filters.
pub(crate) fn auto() -> EffectivePolicy {
    EffectivePolicy { spot_policy: SpotPolicy::Auto, ..EffectivePolicy::defaults(Origin::Run) }
}

pub(crate) fn cpu_offer(instance_type: &str, price: f64) -> Offer {
    Offer {
        backend: "aws".into(),
        region: "us-east-1".into(),
        instance_type: instance_type.into(),
        cpu: 8,
        memory: 32.0,
        disk: Some(100.0),
        price,
        ..Offer::default()
    }
}

fn gpu_offer(name: &str, count: u32, memory: f64) -> Offer {
    Offer {
        gpu_count: count,
        gpu_name: Some(name.into()),
        gpu_memory: memory,
        gpu_vendor: Some(GpuVendor::Nvidia),
        ..cpu_offer("gpu", 2.0)
    }
}

fn fits(req: &Requirements, offer: &Offer) -> bool {
    offer_fits(req, &auto(), offer)
}

#[test]
fn cpu_count_exact_and_ranges() {
    let offer = |cpu| Offer { cpu, ..cpu_offer("m", 1.0) };
    let req = |count| Requirements { cpu: CpuSpec { arch: None, count }, ..any_req() };
    assert!(fits(&req(Range::exact(8)), &offer(8)));
    assert!(!fits(&req(Range::exact(8)), &offer(16)), "a bare value means exactly that");
    assert!(fits(&req(Range { min: Some(4), max: Some(16) }), &offer(16)), "ranges are inclusive");
    assert!(!fits(&req(Range { min: Some(4), max: Some(16) }), &offer(32)));
    assert!(!fits(&req(Range::at_least(4)), &offer(2)));
    assert!(fits(&req(Range { min: None, max: Some(8) }), &offer(2)));
}

#[test]
fn memory_ranges_are_inclusive_floats() {
    let offer = |memory| Offer { memory, ..cpu_offer("m", 1.0) };
    let req = |memory| Requirements { memory, ..any_req() };
    assert!(fits(&req(Range::at_least(8.0)), &offer(8.0)));
    assert!(!fits(&req(Range::at_least(8.0)), &offer(7.5)));
    assert!(fits(&req(Range::exact(15.25)), &offer(15.25)));
    assert!(!fits(&req(Range { min: None, max: Some(64.0) }), &offer(64.5)));
}

#[test]
fn cpu_arch_defaults_to_x86_on_offers() {
    let req = |arch| Requirements { cpu: CpuSpec { arch: Some(arch), count: Range::any() }, ..any_req() };
    let offer = |arch| Offer { cpu_arch: arch, ..cpu_offer("m", 1.0) };
    assert!(fits(&req(CpuArch::Arm), &offer(Some(CpuArch::Arm))));
    assert!(!fits(&req(CpuArch::Arm), &offer(Some(CpuArch::X86))));
    assert!(!fits(&req(CpuArch::Arm), &offer(None)), "no arch means x86");
    assert!(fits(&req(CpuArch::X86), &offer(None)));
    assert!(fits(&any_req(), &offer(Some(CpuArch::Arm))), "no arch requirement: any arch");
}

#[test]
fn offers_without_disk_size_fit_any_disk_requirement() {
    let req = Requirements { disk: Some(Range::at_least(100.0)), ..any_req() };
    let offer = |disk| Offer { disk, ..cpu_offer("m", 1.0) };
    assert!(fits(&req, &offer(None)));
    assert!(fits(&req, &offer(Some(100.0))));
    assert!(!fits(&req, &offer(Some(50.0))));
    assert!(fits(&any_req(), &offer(Some(1.0))), "no disk requirement: any disk");
}

#[test]
fn no_gpu_requirement_accepts_cpu_and_gpu_machines() {
    assert!(fits(&any_req(), &cpu_offer("m", 1.0)));
    assert!(fits(&any_req(), &gpu_offer("A100", 8, 80.0)));
    // `gpu: 0` is how to exclude GPU machines.
    let none = with_gpu(GpuSpec { count: Range::exact(0), ..gpu_spec() });
    assert!(fits(&none, &cpu_offer("m", 1.0)));
    assert!(!fits(&none, &gpu_offer("A100", 1, 80.0)));
}

#[test]
fn gpu_requirement_excludes_cpu_machines_unless_min_count_is_zero() {
    let cpu = cpu_offer("m", 1.0);
    assert!(!fits(&with_gpu(gpu_spec()), &cpu), "default count is 1..");
    // `0..` with a name: a CPU machine skips every GPU filter (gpuhunt `min_gpu_count == 0`).
    let zero_or_more = GpuSpec { names: vec!["A100".into()], count: Range::at_least(0), ..gpu_spec() };
    assert!(fits(&with_gpu(zero_or_more.clone()), &cpu));
    assert!(fits(&with_gpu(zero_or_more.clone()), &gpu_offer("A100", 2, 80.0)));
    assert!(!fits(&with_gpu(zero_or_more), &gpu_offer("H100", 2, 80.0)));
    // `..2` has no minimum, which is not 0: the name filter applies to CPU machines too.
    let up_to_two = GpuSpec { names: vec!["A100".into()], count: Range { min: None, max: Some(2) }, ..gpu_spec() };
    assert!(!fits(&with_gpu(up_to_two), &cpu));
    let bare_up_to_two = GpuSpec { count: Range { min: None, max: Some(2) }, ..gpu_spec() };
    assert!(fits(&with_gpu(bare_up_to_two), &cpu));
}

#[test]
fn gpu_count_exact_and_ranges() {
    let req = |count| with_gpu(GpuSpec { count, ..gpu_spec() });
    assert!(fits(&req(Range::exact(2)), &gpu_offer("A100", 2, 80.0)));
    assert!(!fits(&req(Range::exact(2)), &gpu_offer("A100", 4, 80.0)));
    assert!(fits(&req(Range { min: Some(1), max: Some(4) }), &gpu_offer("A100", 4, 80.0)));
    assert!(!fits(&req(Range { min: Some(1), max: Some(4) }), &gpu_offer("A100", 8, 80.0)));
}

#[test]
fn gpu_names_compare_case_insensitively() {
    let req = |names: &[&str]| with_gpu(GpuSpec { names: names.iter().map(|n| n.to_string()).collect(), ..gpu_spec() });
    assert!(fits(&req(&["a100"]), &gpu_offer("A100", 1, 80.0)));
    assert!(fits(&req(&["A100"]), &gpu_offer("a100", 1, 80.0)));
    assert!(fits(&req(&["H100", "A100"]), &gpu_offer("A100", 1, 80.0)), "any of the names");
    assert!(!fits(&req(&["A100"]), &gpu_offer("A10", 1, 24.0)), "names match whole, not by prefix");
    let nameless = Offer { gpu_name: None, ..gpu_offer("x", 1, 80.0) };
    assert!(!fits(&req(&["A100"]), &nameless));
    assert!(fits(&req(&[]), &nameless), "no names: any GPU");
}

#[test]
fn gpu_vendor_comes_from_the_offer_or_a_well_known_name() {
    let req = |vendor| with_gpu(GpuSpec { vendor: Some(vendor), ..gpu_spec() });
    let offer = |name: &str, vendor| Offer { gpu_vendor: vendor, ..gpu_offer(name, 1, 192.0) };
    assert!(fits(&req(GpuVendor::Amd), &offer("MI300X", Some(GpuVendor::Amd))));
    assert!(fits(&req(GpuVendor::Amd), &offer("mi300x", None)), "derived from the name");
    assert!(!fits(&req(GpuVendor::Amd), &offer("MI300X", Some(GpuVendor::Nvidia))), "the offer's vendor wins");
    assert!(!fits(&req(GpuVendor::Amd), &offer("Mystery9", None)), "unknown vendor");
    assert!(fits(&req(GpuVendor::Nvidia), &offer("H100", None)));
    assert!(fits(&req(GpuVendor::Intel), &offer("Gaudi2", None)));
    assert!(fits(&req(GpuVendor::Tpu), &offer("v5p", None)));
}

#[test]
fn gpu_memory_is_per_gpu_and_total_is_count_times_per_gpu() {
    let per = |memory| with_gpu(GpuSpec { memory: Some(memory), ..gpu_spec() });
    assert!(fits(&per(Range::exact(80.0)), &gpu_offer("A100", 1, 80.0)));
    assert!(!fits(&per(Range::exact(80.0)), &gpu_offer("A100", 1, 40.0)));
    assert!(fits(&per(Range::at_least(24.0)), &gpu_offer("A10", 4, 24.0)));
    assert!(!fits(&per(Range::at_least(40.0)), &gpu_offer("A10", 4, 24.0)), "not the sum");
    let total = |memory| with_gpu(GpuSpec { total_memory: Some(memory), ..gpu_spec() });
    assert!(fits(&total(Range::at_least(80.0)), &gpu_offer("A100", 2, 40.0)));
    assert!(!fits(&total(Range::at_least(80.0)), &gpu_offer("A100", 1, 40.0)));
    assert!(fits(&total(Range { min: Some(64.0), max: Some(128.0) }), &gpu_offer("A10", 4, 24.0)));
    assert!(!fits(&total(Range { min: None, max: Some(64.0) }), &gpu_offer("A10", 4, 24.0)));
    // A CPU machine under `0..` has 0 GPU memory, but skips the filters anyway.
    let zero = GpuSpec { count: Range::at_least(0), total_memory: Some(Range::at_least(1.0)), ..gpu_spec() };
    assert!(fits(&with_gpu(zero), &cpu_offer("m", 1.0)));
}

#[test]
fn compute_capability_from_the_offer_or_a_well_known_nvidia_name() {
    let req = |cc| with_gpu(GpuSpec { compute_capability: Some(cc), ..gpu_spec() });
    let offer =
        |name: &str, cc: Option<&str>| Offer { compute_capability: cc.map(str::to_string), ..gpu_offer(name, 1, 24.0) };
    assert!(fits(&req((8, 0)), &offer("Mystery9", Some("8.6"))), "the offer's value");
    assert!(!fits(&req((8, 0)), &offer("A100", Some("7.5"))), "the offer's value wins over the table");
    assert!(fits(&req((8, 0)), &offer("A100", None)), "A100 is 8.0");
    assert!(fits(&req((8, 0)), &offer("h100", None)), "table lookup ignores case");
    assert!(!fits(&req((8, 0)), &offer("T4", None)), "T4 is 7.5");
    assert!(fits(&req((7, 5)), &offer("T4", None)), "minimum is inclusive");
    assert!(!fits(&req((8, 0)), &offer("Mystery9", None)), "unknown does not fit");
    assert!(fits(&req((8, 0)), &offer("A100", Some("n/a"))), "unparsable: fall back to the table");
    assert!(fits(&req((10, 0)), &offer("x", Some("12"))), "a bare major is MAJOR.0");
    assert!(fits(&req((9, 0)), &offer("x", Some("10.0"))), "numeric, not string, comparison");
    let vendorless = Offer { gpu_vendor: None, ..offer("Mystery9", Some("9.0")) };
    assert!(fits(&req((8, 0)), &vendorless), "a compute capability implies NVIDIA");
    let amd = Offer { gpu_vendor: Some(GpuVendor::Amd), ..offer("MI300X", Some("9.0")) };
    assert!(!fits(&req((8, 0)), &amd), "NVIDIA only");
}

#[test]
fn spot_policy() {
    let spot = Offer { spot: true, ..cpu_offer("m", 1.0) };
    let on_demand = cpu_offer("m", 1.0);
    let policy = |spot_policy| EffectivePolicy { spot_policy, ..auto() };
    let req = any_req();
    assert!(offer_fits(&req, &policy(SpotPolicy::Spot), &spot));
    assert!(!offer_fits(&req, &policy(SpotPolicy::Spot), &on_demand));
    assert!(!offer_fits(&req, &policy(SpotPolicy::OnDemand), &spot));
    assert!(offer_fits(&req, &policy(SpotPolicy::OnDemand), &on_demand));
    assert!(offer_fits(&req, &policy(SpotPolicy::Auto), &spot));
    assert!(offer_fits(&req, &policy(SpotPolicy::Auto), &on_demand));
}

#[test]
fn max_price_is_inclusive() {
    let policy = EffectivePolicy { max_price: Some(2.5), ..auto() };
    let req = any_req();
    assert!(offer_fits(&req, &policy, &cpu_offer("m", 2.5)));
    assert!(!offer_fits(&req, &policy, &cpu_offer("m", 2.51)));
    assert!(!offer_fits(&req, &policy, &cpu_offer("m", f64::NAN)));
    assert!(offer_fits(&req, &auto(), &cpu_offer("m", 1000.0)), "no limit");
}

#[test]
fn backend_region_and_instance_type_filters() {
    let offer = cpu_offer("p4d.24xlarge", 1.0);
    let req = any_req();
    let with = |backends: &[&str], regions: &[&str], types: &[&str]| EffectivePolicy {
        backends: backends.iter().map(|s| s.to_string()).collect(),
        regions: regions.iter().map(|s| s.to_string()).collect(),
        instance_types: types.iter().map(|s| s.to_string()).collect(),
        ..auto()
    };
    assert!(offer_fits(&req, &with(&[], &[], &[]), &offer), "empty lists allow all");
    assert!(offer_fits(&req, &with(&["gcp", "aws"], &["us-east-1"], &["p4d.24xlarge"]), &offer));
    assert!(!offer_fits(&req, &with(&["gcp"], &[], &[]), &offer));
    assert!(!offer_fits(&req, &with(&["AWS"], &[], &[]), &offer), "backend names are exact");
    assert!(!offer_fits(&req, &with(&[], &["us-west-2"], &[]), &offer));
    assert!(!offer_fits(&req, &with(&[], &["US-EAST-1"], &[]), &offer), "regions are case-sensitive");
    assert!(!offer_fits(&req, &with(&[], &[], &["P4D.24XLARGE"]), &offer), "instance types are case-sensitive");
}
