use kube::core::response::StatusDetails;
use kube::core::Status;

use super::*;

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn cpu_quantities_parse_to_cores() {
    assert!(close(cpu_cores("500m"), 0.5));
    assert!(close(cpu_cores("2"), 2.0));
    assert!(close(cpu_cores("1.5"), 1.5));
    assert!(close(cpu_cores("100m"), 0.1));
    assert_eq!(cpu_cores("two"), None);
    assert_eq!(cpu_cores("2x"), None);
}

#[test]
fn memory_quantities_parse_to_binary_gb() {
    assert!(close(memory_gb("16Gi"), 16.0));
    assert!(close(memory_gb("8000Mi"), 8000.0 / 1024.0));
    assert!(close(memory_gb("1G"), 1e9 / GIB));
    assert!(close(memory_gb("1048576Ki"), 1.0));
    assert!(close(memory_gb("1Ti"), 1024.0));
    assert!(close(parse_quantity("1e3"), 1000.0));
    assert!(close(parse_quantity("1E"), 1e18));
    assert_eq!(memory_gb(""), None);
    assert_eq!(memory_gb("16GiB"), None);
}

#[test]
fn memory_requests_are_whole_gi_or_rounded_up_mi() {
    assert_eq!(memory_quantity(16.0), Quantity("16Gi".into()));
    assert_eq!(memory_quantity(0.5), Quantity("512Mi".into()));
    assert_eq!(memory_quantity(7.8125), Quantity("8000Mi".into()));
}

#[test]
fn gpu_products_normalise_to_model_names() {
    assert_eq!(gpu_name_from_product("NVIDIA-A100-SXM4-80GB"), "A100");
    assert_eq!(gpu_name_from_product("NVIDIA-H100-80GB-HBM3"), "H100");
    assert_eq!(gpu_name_from_product("NVIDIA-H100-NVL"), "H100NVL");
    assert_eq!(gpu_name_from_product("Tesla-T4"), "T4");
    assert_eq!(gpu_name_from_product("NVIDIA-A10G"), "A10G");
    assert_eq!(gpu_name_from_product("NVIDIA-GeForce-RTX-4090"), "RTX4090");
    assert_eq!(gpu_name_from_product("NVIDIA-GeForce-RTX-3080-Ti"), "RTX3080Ti");
    assert_eq!(gpu_name_from_product("NVIDIA-RTX-A6000"), "A6000");
    assert_eq!(gpu_name_from_product("Tesla-V100-SXM2-16GB"), "V100");
}

#[test]
fn label_keys_and_values_are_validated() {
    assert!(is_label_value("ml"));
    assert!(is_label_value(""));
    assert!(is_label_value("0f8fad5b-d9cb-469f-a165-70867728950e"));
    assert!(!is_label_value("ml/a100-1"));
    assert!(!is_label_value(&"a".repeat(64)));
    assert!(!is_label_value("-x"));
    assert!(is_qualified_name("kpool.dev/instance-uid"));
    assert!(is_qualified_name("app"));
    assert!(!is_qualified_name("Kpool.dev/x"));
    assert!(!is_qualified_name("kpool.dev/"));
}

fn api(code: u16, message: &str) -> kube::Error {
    kube::Error::Api(Box::new(Status { code, message: message.into(), ..Status::default() }))
}

#[test]
fn api_errors_map_to_the_backend_taxonomy() {
    assert_eq!(api_error("get pod", api(404, "pods \"x\" not found")).category(), "NotFound");
    let quota = api_error("create pod", api(403, "pods \"x\" is forbidden: exceeded quota: gpu, requested: ..."));
    assert_eq!(quota.category(), "InsufficientCapacity");
    assert!(quota.to_string().contains("failed to create pod: pods \"x\" is forbidden: exceeded quota"));
    assert_eq!(api_error("create pod", api(403, "forbidden by RBAC")).category(), "Other");
    assert_eq!(api_error("create pod", api(422, "invalid name")).category(), "InvalidConfig");
    assert_eq!(api_error("create pod", api(400, "bad request")).category(), "InvalidConfig");
    assert_eq!(api_error("create pod", api(500, "boom")).category(), "Unanswered");
    let mut throttled = Status { code: 429, message: "slow down".into(), ..Status::default() };
    throttled.details = Some(StatusDetails {
        name: String::new(),
        group: String::new(),
        kind: String::new(),
        uid: String::new(),
        causes: Vec::new(),
        retry_after_seconds: 7,
    });
    assert_eq!(
        api_error("list pods", kube::Error::Api(Box::new(throttled))),
        BackendError::RateLimited {
            message: "failed to list pods: slow down".into(),
            retry_after: Some(Duration::from_secs(7))
        }
    );
}
