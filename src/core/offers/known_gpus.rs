//! Well-known accelerators, after gpuhunt's `KNOWN_*` tables
//! (`gpuhunt/_internal/constraints.py`, gpuhunt 0.1.34): the vendor of a GPU name and the
//! compute capability of an NVIDIA GPU name, for offers whose catalog did not say.
//! Names compare case-insensitively, as gpuhunt's `find_accelerators` does.

use crate::api::resources::GpuVendor;

/// NVIDIA GPUs and their compute capability. gpuhunt lists some names twice (memory
/// variants); the compute capability is the same for every variant, so one row each.
const NVIDIA: &[(&str, (u32, u32))] = &[
    ("A10", (8, 6)),
    ("A16", (8, 6)),
    ("A40", (8, 6)),
    ("A100", (8, 0)),
    ("A10G", (8, 6)),
    ("A4000", (8, 6)),
    ("A4500", (8, 6)),
    ("A5000", (8, 6)),
    ("A6000", (8, 6)),
    ("H100", (9, 0)),
    ("H100NVL", (9, 0)),
    ("H200", (9, 0)),
    ("H200NVL", (9, 0)),
    ("B200", (10, 0)),
    ("GB200", (10, 0)),
    ("B300", (10, 0)),
    ("GB300", (10, 0)),
    ("L4", (8, 9)),
    ("L40", (8, 9)),
    ("L40S", (8, 9)),
    ("P100", (6, 0)),
    ("RTX2060", (7, 5)),
    ("RTX2060SUPER", (7, 5)),
    ("RTX2070", (7, 5)),
    ("RTX2070SUPER", (7, 5)),
    ("RTX2080", (7, 5)),
    ("RTX2080SUPER", (7, 5)),
    ("RTX2080Ti", (7, 5)),
    ("RTX3050", (8, 6)),
    ("RTX3060", (8, 6)),
    ("RTX3060Ti", (8, 6)),
    ("RTX3070", (8, 6)),
    ("RTX3070Ti", (8, 6)),
    ("RTX3080", (8, 6)),
    ("RTX3080Ti", (8, 6)),
    ("RTX3090", (8, 6)),
    ("RTX3090Ti", (8, 6)),
    ("RTX4060", (8, 9)),
    ("RTX4060Ti", (8, 9)),
    ("RTX4070", (8, 9)),
    ("RTX4070SUPER", (8, 9)),
    ("RTX4070Ti", (8, 9)),
    ("RTX4070TiSUPER", (8, 9)),
    ("RTX4080", (8, 9)),
    ("RTX4080SUPER", (8, 9)),
    ("RTX4090", (8, 9)),
    ("RTX5060", (12, 0)),
    ("RTX5060Ti", (12, 0)),
    ("RTX5070", (12, 0)),
    ("RTX5070Ti", (12, 0)),
    ("RTX5080", (12, 0)),
    ("RTX5090", (12, 0)),
    ("RTX6000", (7, 5)),
    ("RTX2000Ada", (8, 9)),
    ("RTX4000Ada", (8, 9)),
    ("RTX6000Ada", (8, 9)),
    ("RTXPRO4500", (12, 0)),
    ("RTXPRO6000", (12, 0)),
    ("T4", (7, 5)),
    ("V100", (7, 0)),
    ("GH200", (9, 0)),
];

/// Accelerators of the other vendors, for vendor lookup only.
const OTHERS: &[(&str, GpuVendor)] = &[
    ("MI100", GpuVendor::Amd),
    ("MI210", GpuVendor::Amd),
    ("MI250", GpuVendor::Amd),
    ("MI250X", GpuVendor::Amd),
    ("MI300A", GpuVendor::Amd),
    ("MI300X", GpuVendor::Amd),
    ("MI308X", GpuVendor::Amd),
    ("MI325X", GpuVendor::Amd),
    ("MI350X", GpuVendor::Amd),
    ("MI355X", GpuVendor::Amd),
    ("v2", GpuVendor::Tpu),
    ("v3", GpuVendor::Tpu),
    ("v4", GpuVendor::Tpu),
    ("v5p", GpuVendor::Tpu),
    ("v5litepod", GpuVendor::Tpu),
    ("v6e", GpuVendor::Tpu),
    ("Gaudi", GpuVendor::Intel),
    ("Gaudi2", GpuVendor::Intel),
    ("Gaudi3", GpuVendor::Intel),
    ("n150", GpuVendor::Tenstorrent),
    ("n300", GpuVendor::Tenstorrent),
    ("tt-galaxy-wh", GpuVendor::Tenstorrent),
    ("p100a", GpuVendor::Tenstorrent),
    ("p150", GpuVendor::Tenstorrent),
    ("p300", GpuVendor::Tenstorrent),
    ("tt-galaxy-bh", GpuVendor::Tenstorrent),
];

/// Compute capability of a well-known NVIDIA GPU (gpuhunt's `get_compute_capability`).
pub(super) fn nvidia_compute_capability(name: &str) -> Option<(u32, u32)> {
    NVIDIA.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, cc)| cc)
}

/// Vendor of a well-known accelerator (gpuhunt's `get_gpu_vendor`).
pub(super) fn vendor_of(name: &str) -> Option<GpuVendor> {
    if nvidia_compute_capability(name).is_some() {
        return Some(GpuVendor::Nvidia);
    }
    OTHERS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, v)| v)
}
