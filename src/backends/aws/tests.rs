use base64::Engine;

use super::client::CallError;
use super::launch::{first_token, next_token};
use super::model::{InstanceState, ItemSet, Tag};
use super::*;
use crate::backends::MachineState;

fn config() -> AwsConfig {
    AwsConfig {
        regions: vec!["us-east-1".into(), "us-west-2".into()],
        endpoint: Some("http://127.0.0.1:1".into()),
        access_key_id: "AKIAEXAMPLE".into(),
        secret_access_key: "very-secret".into(),
        session_token: Some("token-secret".into()),
        image_id: Some("ami-12345678".into()),
        ..AwsConfig::default()
    }
}

fn offer(region: &str, instance_type: &str, spot: bool) -> Offer {
    Offer {
        backend: "catalog".into(),
        region: region.into(),
        instance_type: instance_type.into(),
        cpu: 4,
        memory: 16.0,
        spot,
        price: 0.5,
        ..Offer::default()
    }
}

fn instance(id: &str, state: &str, public: Option<&str>, private: Option<&str>, tags: &[(&str, &str)]) -> Instance {
    Instance {
        instance_id: id.into(),
        instance_state: InstanceState { name: state.into() },
        ip_address: public.map(str::to_string),
        private_ip_address: private.map(str::to_string),
        tag_set: ItemSet {
            items: tags.iter().map(|(k, v)| Tag { key: k.to_string(), value: v.to_string() }).collect(),
        },
        ..Instance::default()
    }
}

fn spec(name: &str, offer: Offer) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        offer,
        tags: BTreeMap::from([
            (TAG_MANAGED_BY.to_string(), "kpool".to_string()),
            ("kpool.dev/pool".to_string(), "default".to_string()),
        ]),
        ssh_public_key: None,
    }
}

fn err(code: &str, status: u16) -> CallError {
    CallError::Api { status, code: code.into(), message: "boom".into(), retry_after: None }
}

#[test]
fn error_codes_map_to_the_taxonomy() {
    let cases = [
        ("InsufficientInstanceCapacity", 500, "InsufficientCapacity"),
        ("InsufficientHostCapacity", 500, "InsufficientCapacity"),
        ("SpotMaxPriceTooLow", 400, "InsufficientCapacity"),
        ("MaxSpotInstanceCountExceeded", 400, "InsufficientCapacity"),
        ("Unsupported", 400, "InsufficientCapacity"),
        ("InstanceLimitExceeded", 400, "InsufficientCapacity"),
        ("VcpuLimitExceeded", 400, "InsufficientCapacity"),
        ("RequestLimitExceeded", 503, "RateLimited"),
        ("Throttling", 400, "RateLimited"),
        ("AuthFailure", 401, "InvalidConfig"),
        ("UnauthorizedOperation", 403, "InvalidConfig"),
        ("SignatureDoesNotMatch", 403, "InvalidConfig"),
        ("InvalidAMIID.NotFound", 400, "InvalidConfig"),
        ("InvalidAMIID.Malformed", 400, "InvalidConfig"),
        ("InvalidKeyPair.NotFound", 400, "InvalidConfig"),
        ("InvalidParameterValue", 400, "InvalidConfig"),
        ("InvalidSubnetID.NotFound", 400, "InvalidConfig"),
        ("InvalidInstanceType", 400, "InvalidConfig"),
        ("InvalidInstanceID.NotFound", 400, "NotFound"),
        ("InternalError", 500, "Unanswered"),
        ("Unavailable", 503, "Unanswered"),
        ("", 502, "Unanswered"),
        ("DryRunOperation", 412, "Other"),
        ("", 403, "InvalidConfig"),
    ];
    for (code, status, want) in cases {
        assert_eq!(map_error("failed to x", err(code, status)).category(), want, "{code} ({status})");
    }
    assert_eq!(
        map_error("failed to x", CallError::Transport("no answer within 1s".into())),
        BackendError::Unanswered("failed to x: no answer within 1s".into())
    );
}

#[test]
fn messages_keep_code_and_message() {
    let e = map_error("failed to launch p4d.24xlarge in us-east-1", err("InsufficientInstanceCapacity", 500));
    assert_eq!(
        e,
        BackendError::InsufficientCapacity(
            "failed to launch p4d.24xlarge in us-east-1: InsufficientInstanceCapacity: boom".into()
        )
    );
    let e = map_error("failed to launch", err("InvalidAMIID.NotFound", 400));
    assert!(e.to_string().contains("InvalidAMIID.NotFound: boom") && e.to_string().contains("image_id"), "{e}");
    let throttled = CallError::Api {
        status: 503,
        code: "RequestLimitExceeded".into(),
        message: "Request limit exceeded.".into(),
        retry_after: Some(Duration::from_secs(3)),
    };
    assert_eq!(
        map_error("failed to y", throttled),
        BackendError::RateLimited {
            message: "failed to y: RequestLimitExceeded: Request limit exceeded.".into(),
            retry_after: Some(Duration::from_secs(3)),
        }
    );
}

#[test]
fn instance_states_map_to_machine_states() {
    let cases = [
        ("pending", MachineState::Pending),
        ("running", MachineState::Running),
        ("shutting-down", MachineState::Stopping),
        ("stopping", MachineState::Stopping),
        ("stopped", MachineState::Stopping),
        ("terminated", MachineState::Terminated),
    ];
    for (state, want) in cases {
        assert_eq!(machine_of(&instance("i-1", state, None, None, &[])).state, want, "{state}");
    }
}

#[test]
fn address_is_public_then_private_and_only_when_running() {
    let m = machine_of(&instance("i-1", "running", Some("54.0.0.1"), Some("10.0.0.1"), &[(TAG_MACHINE, "kpool-a")]));
    assert_eq!((m.name.as_str(), m.provider_id.as_str()), ("kpool-a", "i-1"));
    assert_eq!(m.address.as_deref(), Some("54.0.0.1"));
    let m = machine_of(&instance("i-1", "running", Some(""), Some("10.0.0.1"), &[("Name", "web")]));
    assert_eq!((m.name.as_str(), m.address.as_deref()), ("web", Some("10.0.0.1")));
    let m = machine_of(&instance("i-1", "pending", Some("54.0.0.1"), Some("10.0.0.1"), &[]));
    assert_eq!((m.name.as_str(), m.address), ("i-1", None));
}

#[test]
fn most_alive_state_ranks_first() {
    let mut states = ["terminated", "shutting-down", "stopped", "pending", "running"];
    states.sort_by_key(|s| state_rank(s));
    assert_eq!(states, ["running", "pending", "stopped", "shutting-down", "terminated"]);
}

#[test]
fn launch_parameters() {
    let mut cfg = config();
    cfg.ssh_public_key = Some("ssh-ed25519 AAAAC3Nz me@host".into());
    cfg.subnet_id = Some("subnet-1".into());
    cfg.security_group_ids = vec!["sg-1".into(), "sg-2".into()];
    let backend = AwsBackend::new("aws", cfg, vec![]).unwrap();
    let p = backend.launch_params(&spec("kpool-abc", offer("us-east-1", "g5.xlarge", true)), "ami-1", None);
    for (k, v) in [
        ("ImageId", "ami-1"),
        ("InstanceType", "g5.xlarge"),
        ("MinCount", "1"),
        ("MaxCount", "1"),
        ("TagSpecification.1.ResourceType", "instance"),
        ("TagSpecification.2.ResourceType", "volume"),
        ("InstanceMarketOptions.MarketType", "spot"),
        ("InstanceMarketOptions.SpotOptions.SpotInstanceType", "one-time"),
        ("SubnetId", "subnet-1"),
        ("SecurityGroupId.1", "sg-1"),
        ("SecurityGroupId.2", "sg-2"),
    ] {
        assert_eq!(p.get(k), Some(v), "{k}");
    }
    // Tags, sorted by key, on the instance and its volumes.
    let tags: Vec<(&str, &str)> = (1..=4)
        .map(|i| {
            (
                p.get(&format!("TagSpecification.1.Tag.{i}.Key")).unwrap(),
                p.get(&format!("TagSpecification.1.Tag.{i}.Value")).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        [
            ("Name", "kpool-abc"),
            ("kpool.dev/machine", "kpool-abc"),
            ("kpool.dev/managed-by", "kpool"),
            ("kpool.dev/pool", "default")
        ]
    );
    assert_eq!(p.get("TagSpecification.2.Tag.4.Value"), Some("default"));
    let user_data = base64::engine::general_purpose::STANDARD.decode(p.get("UserData").unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(user_data).unwrap(),
        "#cloud-config\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAAC3Nz me@host\"\n"
    );

    let p = backend.launch_params(&spec("kpool-abc", offer("us-east-1", "g5.xlarge", false)), "ami-1", None);
    assert_eq!(p.get("InstanceMarketOptions.MarketType"), None);

    // The instance's own key goes next to the backend's.
    let mut own = spec("kpool-abc", offer("us-east-1", "g5.xlarge", false));
    own.ssh_public_key = Some("ssh-ed25519 AAAAinstance kpool-abc".into());
    let p = backend.launch_params(&own, "ami-1", None);
    let user_data = base64::engine::general_purpose::STANDARD.decode(p.get("UserData").unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(user_data).unwrap(),
        "#cloud-config\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAAC3Nz me@host\"\n  - \"ssh-ed25519 AAAAinstance kpool-abc\"\n"
    );
}

#[test]
fn the_instance_key_alone_makes_user_data() {
    let backend = AwsBackend::new("aws", config(), vec![]).unwrap();
    let mut s = spec("kpool-abc", offer("us-east-1", "t3.micro", false));
    s.ssh_public_key = Some("ssh-ed25519 AAAAinstance kpool-abc".into());
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(backend.launch_params(&s, "ami-1", None).get("UserData").unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(user_data).unwrap(),
        "#cloud-config\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAAinstance kpool-abc\"\n"
    );
}

#[test]
fn managed_by_defaults_to_kpool() {
    let backend = AwsBackend::new("aws", config(), vec![]).unwrap();
    let mut s = spec("kpool-abc", offer("us-east-1", "t3.micro", false));
    s.tags.clear();
    let p = backend.launch_params(&s, "ami-1", None);
    assert_eq!(p.get("TagSpecification.1.Tag.3.Key"), Some(TAG_MANAGED_BY));
    assert_eq!(p.get("TagSpecification.1.Tag.3.Value"), Some(MANAGED_BY));
    assert_eq!(p.get("UserData"), None);
}

#[test]
fn client_tokens_fit_ec2_limits_and_chain() {
    let name = "kpool-0f1e2d3c-aaaa-bbbb-cccc-123456789012";
    assert_eq!(first_token(name), name);
    let long = "x".repeat(65);
    assert_eq!(first_token(&long).len(), 64);
    assert_ne!(first_token(&long), first_token(&"x".repeat(66)));
    let next = next_token(name, "i-0dead");
    assert_eq!(next.len(), 64);
    assert!(next.is_ascii());
    assert_eq!(next, next_token(name, "i-0dead"), "deterministic");
    assert_ne!(next, next_token(name, "i-1dead"));
    assert_ne!(next_token(&next, "i-0dead"), next);
}

#[tokio::test]
async fn offers_are_the_catalog_in_the_configured_regions() {
    let catalog = vec![
        offer("us-east-1", "g5.xlarge", false),
        offer("eu-west-1", "g5.xlarge", false),
        offer("us-west-2", "p4d.24xlarge", true),
    ];
    let backend = AwsBackend::new("aws-prod", config(), catalog).unwrap();
    let offers = backend.offers(&crate::api::resources::ResourcesSpec::default().resolve().unwrap()).await.unwrap();
    let got: Vec<(&str, &str, &str)> =
        offers.iter().map(|o| (o.backend.as_str(), o.region.as_str(), o.instance_type.as_str())).collect();
    assert_eq!(got, [("aws-prod", "us-east-1", "g5.xlarge"), ("aws-prod", "us-west-2", "p4d.24xlarge")]);
}

#[test]
fn configuration_is_validated() {
    type Edit = fn(&mut AwsConfig);
    let cases: [(Edit, &str); 7] = [
        (|c| c.regions.clear(), "regions"),
        (|c| c.regions = vec!["US East".into()], "regions"),
        (|c| c.access_key_id = " ".into(), "access_key_id"),
        (|c| c.secret_access_key.clear(), "secret_access_key"),
        (|c| c.image_id = Some("img-1".into()), "image_id"),
        (|c| c.ssh_public_key = Some("ssh-ed25519\nAAAA".into()), "ssh_public_key"),
        (|c| c.endpoint = Some("localhost:5000".into()), "endpoint"),
    ];
    for (edit, field) in cases {
        let mut cfg = config();
        edit(&mut cfg);
        match AwsBackend::new("aws", cfg, vec![]) {
            Err(BackendError::InvalidConfig(m)) => assert!(m.contains(field), "{field}: {m}"),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn create_without_image_or_outside_the_regions_is_invalid_config() {
    let mut cfg = config();
    cfg.image_id = None;
    let backend = AwsBackend::new("aws", cfg, vec![]).unwrap();
    let e = backend.create(&spec("kpool-a", offer("us-east-1", "t3.micro", false))).await.unwrap_err();
    assert!(matches!(&e, BackendError::InvalidConfig(m) if m.contains("image_id")), "{e:?}");
    let backend = AwsBackend::new("aws", config(), vec![]).unwrap();
    let e = backend.create(&spec("kpool-a", offer("eu-west-1", "t3.micro", false))).await.unwrap_err();
    assert!(matches!(&e, BackendError::InvalidConfig(m) if m.contains("eu-west-1")), "{e:?}");
}

#[test]
fn debug_output_hides_credentials() {
    let cfg = config();
    let shown = format!("{cfg:?} {:?}", AwsBackend::new("aws", cfg.clone(), vec![]).unwrap());
    assert!(shown.contains("AKIAEXAMPLE"));
    assert!(!shown.contains("very-secret") && !shown.contains("token-secret"), "{shown}");
}

#[test]
fn a_disk_size_maps_the_root_device_to_a_gp3_volume() {
    let backend = AwsBackend::new("aws", config(), vec![]).unwrap();
    let mut o = offer("us-east-1", "g5.xlarge", false);
    o.disk = Some(99.5);
    let p = backend.launch_params(&spec("kpool-abc", o.clone()), "ami-1", Some("/dev/sda1"));
    for (k, v) in [
        ("BlockDeviceMapping.1.DeviceName", "/dev/sda1"),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "100"),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
    ] {
        assert_eq!(p.get(k), Some(v), "{k}");
    }
    // No root device known, or no disk size: the AMI's default volume.
    assert_eq!(
        backend.launch_params(&spec("kpool-abc", o), "ami-1", None).get("BlockDeviceMapping.1.DeviceName"),
        None
    );
    let p =
        backend.launch_params(&spec("kpool-abc", offer("us-east-1", "g5.xlarge", false)), "ami-1", Some("/dev/xvda"));
    assert_eq!(p.get("BlockDeviceMapping.1.Ebs.VolumeSize"), None);
}

#[tokio::test]
async fn offers_without_a_disk_size_take_the_required_minimum() {
    let mut sized = offer("us-east-1", "m5.large", false);
    sized.disk = Some(50.0);
    let backend = AwsBackend::new("aws", config(), vec![offer("us-east-1", "g5.xlarge", false), sized]).unwrap();
    let req =
        crate::api::resources::ResourcesSpec { disk: Some("200GB..".into()), ..Default::default() }.resolve().unwrap();
    let disks: Vec<Option<f64>> = backend.offers(&req).await.unwrap().iter().map(|o| o.disk).collect();
    assert_eq!(disks, [Some(200.0), Some(50.0)], "a catalog disk size is kept as is");
}
