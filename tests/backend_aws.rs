//! The `aws` backend against a real moto server on loopback (EC2 and IAM, signatures
//! checked), through a fault-injecting proxy for what moto never does by itself:
//! capacity errors, throttling, server errors, slow answers.
//!
//! Needs the venv of scripts/peers/moto.sh; without it every test fails and says so.
//! Tests share one moto server and keep apart by machine names.

mod support_aws;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use kpool::api::offer::Offer;
use kpool::backends::aws::client::{Ec2Client, Params};
use kpool::backends::aws::{AwsBackend, AwsConfig, TAG_MACHINE};
use kpool::backends::{
    Backend, BackendError, MachineSpec, MachineState, Owner, TAG_INSTALLATION, TAG_INSTANCE, TAG_MANAGED_BY,
    TAG_NAMESPACE, TAG_POOL,
};
use support_aws::proxy::{parse_form, Fault, Lost, Proxy};
use support_aws::{moto, Moto};

const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKpool me@laptop";
/// The installation the backends under test belong to.
const INSTALLATION: &str = "backend-aws-tests";

fn owner(installation: &str, namespace: &str) -> Owner {
    Owner { installation: installation.into(), namespace: namespace.into() }
}

/// A proxy in front of moto and a backend talking through it.
struct Env {
    moto: &'static Moto,
    proxy: Proxy,
}

impl Env {
    async fn new() -> Env {
        let moto = moto();
        Env { moto, proxy: Proxy::start(&moto.endpoint).await }
    }

    fn config(&self) -> AwsConfig {
        AwsConfig { ssh_public_key: Some(SSH_KEY.into()), ..self.moto.config(&self.proxy.endpoint) }
    }

    fn backend(&self) -> AwsBackend {
        self.backend_of(owner(INSTALLATION, "ml"))
    }

    fn backend_of(&self, owner: Owner) -> AwsBackend {
        AwsBackend::new("aws", self.config(), catalog()).expect("backend").with_owner(owner)
    }

    /// A client straight to moto, past the proxy, for checks the backend cannot make.
    fn raw(&self) -> Ec2Client {
        self.moto.ec2()
    }

    /// Raw `DescribeInstances` of the instances named `name` in `region`.
    async fn instances_named(&self, region: &str, name: &str) -> String {
        let mut p = Params::new();
        p.filter(&format!("tag:{TAG_MACHINE}"), &[name]);
        self.raw().call(region, "DescribeInstances", &p).await.expect("describe")
    }
}

fn catalog() -> Vec<Offer> {
    vec![offer("us-east-1", "t3.micro", false), offer("us-west-2", "g5.xlarge", true)]
}

fn offer(region: &str, instance_type: &str, spot: bool) -> Offer {
    support_aws::offer(region, instance_type, spot, 0.01)
}

fn spec(name: &str, offer: Offer) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        offer,
        tags: BTreeMap::from([
            (TAG_MANAGED_BY.to_string(), "kpool".to_string()),
            (TAG_INSTANCE.to_string(), format!("ml/{name}")),
            (TAG_POOL.to_string(), "default".to_string()),
        ]),
        ssh_public_key: None,
    }
}

fn on_demand(name: &str) -> MachineSpec {
    spec(name, offer("us-east-1", "t3.micro", false))
}

/// How many `<instanceId>` an answer lists.
fn count_instances(xml: &str) -> usize {
    xml.matches("<instanceId>").count()
}

#[tokio::test]
async fn create_then_get_reports_pending_then_running_with_an_address() {
    let env = Env::new().await;
    let backend = env.backend();
    let created = backend.create(&on_demand("kpool-lifecycle")).await.unwrap();
    assert_eq!(created.name, "kpool-lifecycle");
    assert_eq!(created.state, MachineState::Pending);
    assert!(created.provider_id.starts_with("i-"), "{created:?}");
    assert_eq!(created.address, None);

    // moto starts instances at once.
    let got = backend.get("kpool-lifecycle").await.unwrap();
    assert_eq!(got.provider_id, created.provider_id);
    assert_eq!(got.state, MachineState::Running);
    let address: std::net::IpAddr = got.address.as_deref().expect("an address").parse().expect("an IP");
    assert!(address.is_ipv4());
}

#[tokio::test]
async fn create_is_idempotent_by_machine_name() {
    let env = Env::new().await;
    let first = env.backend().create(&on_demand("kpool-twice")).await.unwrap();
    let again = env.backend().create(&on_demand("kpool-twice")).await.unwrap();
    // A fresh backend (a restarted controller) finds it too, from another offer's region.
    let elsewhere = env.backend().create(&spec("kpool-twice", offer("us-west-2", "g5.xlarge", true))).await.unwrap();
    assert_eq!(again.provider_id, first.provider_id);
    assert_eq!(elsewhere.provider_id, first.provider_id);

    let launches = env.proxy.seen("RunInstances");
    assert_eq!(launches.len(), 1, "one RunInstances");
    // EC2's own guard against a double launch (moto does not honour it, AWS does).
    assert_eq!(launches[0].params.get("ClientToken").map(String::as_str), Some("kpool-twice"));
    assert_eq!(count_instances(&env.instances_named("us-east-1", "kpool-twice").await), 1);
    assert_eq!(count_instances(&env.instances_named("us-west-2", "kpool-twice").await), 0);
}

#[tokio::test]
async fn spot_offers_launch_spot_instances() {
    let env = Env::new().await;
    let backend = env.backend();
    backend.create(&spec("kpool-spot", offer("us-west-2", "g5.xlarge", true))).await.unwrap();
    backend.create(&on_demand("kpool-not-spot")).await.unwrap();

    let launches = env.proxy.seen("RunInstances");
    let spot = launches.iter().find(|s| s.params["ClientToken"] == "kpool-spot").unwrap();
    assert_eq!(spot.params.get("InstanceMarketOptions.MarketType").map(String::as_str), Some("spot"));
    assert_eq!(spot.params.get("InstanceType").map(String::as_str), Some("g5.xlarge"));
    assert!(spot.response.contains("<instanceLifecycle>spot</instanceLifecycle>"), "{}", spot.response);
    let listed = env.instances_named("us-west-2", "kpool-spot").await;
    assert!(listed.contains("<instanceLifecycle>spot</instanceLifecycle>"), "{listed}");

    let plain = launches.iter().find(|s| s.params["ClientToken"] == "kpool-not-spot").unwrap();
    assert!(!plain.params.contains_key("InstanceMarketOptions.MarketType"));
    assert!(!env.instances_named("us-east-1", "kpool-not-spot").await.contains("<instanceLifecycle>spot"));
}

#[tokio::test]
async fn instances_and_volumes_carry_the_tags() {
    let env = Env::new().await;
    let backend = env.backend();
    let s = on_demand("kpool-tagged");
    backend.create(&s).await.unwrap();
    let got = backend.get("kpool-tagged").await.unwrap();
    let mut want = s.tags.clone();
    want.insert("Name".into(), "kpool-tagged".into());
    want.insert(TAG_MACHINE.into(), "kpool-tagged".into());
    want.extend(owner(INSTALLATION, "ml").tags());
    assert_eq!(got.tags, want, "the spec's tags, the machine name and the backend's owner");

    let mut p = Params::new();
    p.filter(&format!("tag:{TAG_MACHINE}"), &["kpool-tagged"]);
    let volumes = env.raw().call("us-east-1", "DescribeVolumes", &p).await.unwrap();
    assert!(volumes.contains("<volumeId>"), "the root volume is tagged: {volumes}");
    assert!(volumes.contains("ml/kpool-tagged") && volumes.contains(INSTALLATION), "{volumes}");
}

#[tokio::test]
async fn the_ssh_key_reaches_the_instance_as_cloud_init_user_data() {
    let env = Env::new().await;
    let created = env.backend().create(&on_demand("kpool-ssh")).await.unwrap();
    let mut p = Params::new();
    p.set("InstanceId", &created.provider_id).set("Attribute", "userData");
    let answer = env.raw().call("us-east-1", "DescribeInstanceAttribute", &p).await.unwrap();
    let encoded = answer
        .split("<value>")
        .nth(1)
        .and_then(|v| v.split("</value>").next())
        .unwrap_or_else(|| panic!("no user data in {answer}"));
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded.trim()).unwrap()).unwrap();
    assert!(decoded.starts_with("#cloud-config\n"), "{decoded}");
    assert!(decoded.contains(&format!("ssh_authorized_keys:\n  - \"{SSH_KEY}\"")), "{decoded}");
}

#[tokio::test]
async fn the_instance_key_reaches_the_instance_next_to_the_backend_key() {
    let env = Env::new().await;
    let own = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGkpoolOwnKeyOfTheInstance kpool:ml/gpu-1";
    let mut spec = on_demand("kpool-own-key");
    spec.ssh_public_key = Some(own.into());
    let created = env.backend().create(&spec).await.unwrap();
    // What EC2 stored (moto keeps the user data of the launch request).
    let mut p = Params::new();
    p.set("InstanceId", &created.provider_id).set("Attribute", "userData");
    let answer = env.raw().call("us-east-1", "DescribeInstanceAttribute", &p).await.unwrap();
    let encoded = answer.split("<value>").nth(1).and_then(|v| v.split("</value>").next()).expect("user data");
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded.trim()).unwrap()).unwrap();
    assert_eq!(decoded, format!("#cloud-config\nssh_authorized_keys:\n  - \"{SSH_KEY}\"\n  - \"{own}\"\n"));
    // And what was sent.
    let launches = env.proxy.seen("RunInstances");
    assert_eq!(launches.len(), 1);
    assert_eq!(launches[0].params.get("UserData").map(String::as_str), Some(encoded.trim()));

    // A key that is not one line is refused before any launch.
    let mut bad = on_demand("kpool-bad-key");
    bad.ssh_public_key = Some("ssh-ed25519\nAAAA".into());
    assert_eq!(env.backend().create(&bad).await.unwrap_err().category(), "InvalidConfig");
    assert_eq!(env.proxy.seen("RunInstances").len(), 1);
}

#[tokio::test]
async fn delete_terminates_and_then_reports_not_found() {
    let env = Env::new().await;
    let backend = env.backend();
    let created = backend.create(&on_demand("kpool-doomed")).await.unwrap();
    backend.delete("kpool-doomed").await.unwrap();
    let terminate = env.proxy.seen("TerminateInstances");
    assert_eq!(terminate.len(), 1);
    assert_eq!(terminate[0].params.get("InstanceId.1"), Some(&created.provider_id));

    let got = backend.get("kpool-doomed").await.unwrap();
    assert!(matches!(got.state, MachineState::Stopping | MachineState::Terminated), "{got:?}");
    assert_eq!(got.address, None);
    assert!(matches!(backend.delete("kpool-doomed").await, Err(BackendError::NotFound(_))));
    assert_eq!(env.proxy.seen("TerminateInstances").len(), 1, "nothing left to terminate");

    // The name can be used again: a new machine, not the terminated one.
    let again = backend.create(&on_demand("kpool-doomed")).await.unwrap();
    assert_ne!(again.provider_id, created.provider_id);
    assert_eq!(backend.get("kpool-doomed").await.unwrap().provider_id, again.provider_id);
}

#[tokio::test]
async fn missing_machines_are_not_found() {
    let env = Env::new().await;
    let backend = env.backend();
    assert!(matches!(backend.get("kpool-never-created").await, Err(BackendError::NotFound(_))));
    assert!(matches!(backend.delete("kpool-never-created").await, Err(BackendError::NotFound(_))));
    assert!(env.proxy.seen("TerminateInstances").is_empty());
}

#[tokio::test]
async fn list_owned_sees_only_instances_tagged_as_kpool_s() {
    let env = Env::new().await;
    let backend = env.backend();
    backend.create(&on_demand("kpool-owned-1")).await.unwrap();
    backend.create(&spec("kpool-owned-2", offer("us-west-2", "g5.xlarge", true))).await.unwrap();
    // Someone else's instance, in the same account and region.
    let mut p = Params::new();
    p.set("ImageId", &env.moto.image_id).set("InstanceType", "t3.micro").set("MinCount", "1").set("MaxCount", "1");
    p.set("TagSpecification.1.ResourceType", "instance")
        .set("TagSpecification.1.Tag.1.Key", "Name")
        .set("TagSpecification.1.Tag.1.Value", "not-ours");
    let theirs = env.raw().call("us-east-1", "RunInstances", &p).await.unwrap();
    let their_id = theirs.split("<instanceId>").nth(1).and_then(|s| s.split('<').next()).unwrap().to_string();

    let owned = backend.list_owned().await.unwrap();
    let names: Vec<&str> = owned.iter().map(|m| m.name.as_str()).collect();
    assert!(names.contains(&"kpool-owned-1") && names.contains(&"kpool-owned-2"), "{names:?}");
    assert!(!owned.iter().any(|m| m.provider_id == their_id || m.name == "not-ours"), "{names:?}");
    assert!(owned.iter().all(|m| m.tags.contains_key(TAG_MANAGED_BY)));

    backend.delete("kpool-owned-1").await.unwrap();
    let owned = backend.list_owned().await.unwrap();
    assert!(!owned.iter().any(|m| m.name == "kpool-owned-1"), "terminated instances are not listed");
    assert!(owned.iter().any(|m| m.name == "kpool-owned-2"));
}

#[tokio::test]
async fn list_owned_sees_only_its_installation_and_namespace() {
    let env = Env::new().await;
    let mine = env.backend();
    let other_cluster = env.backend_of(owner("other-cluster", "ml"));
    let team_b = env.backend_of(owner(INSTALLATION, "team-b"));
    // Launched before machines carried an installation: kpool's marker and instance only.
    let before = AwsBackend::new("aws", env.config(), catalog()).unwrap();
    mine.create(&on_demand("kpool-own-mine")).await.unwrap();
    other_cluster.create(&on_demand("kpool-own-theirs")).await.unwrap();
    team_b.create(&spec("kpool-own-team-b", offer("us-west-2", "g5.xlarge", true))).await.unwrap();
    before.create(&on_demand("kpool-own-before")).await.unwrap();
    let launch = env.proxy.seen("RunInstances").into_iter().next().expect("a launch");
    let tags: Vec<&str> =
        launch.params.iter().filter(|(k, _)| k.ends_with(".Value")).map(|(_, v)| v.as_str()).collect();
    assert!(tags.contains(&INSTALLATION) && tags.contains(&"ml"), "{:?}", launch.params);

    let ours = |machines: Vec<kpool::backends::Machine>| -> Vec<String> {
        let mut n: Vec<String> = machines.into_iter().map(|m| m.name).filter(|n| n.starts_with("kpool-own-")).collect();
        n.sort();
        n
    };
    let owned = mine.list_owned().await.unwrap();
    assert!(owned.iter().all(|m| m.tags.get(TAG_INSTALLATION).map(String::as_str) == Some(INSTALLATION)));
    assert!(owned.iter().all(|m| m.tags.get(TAG_NAMESPACE).map(String::as_str) == Some("ml")));
    assert_eq!(ours(owned), ["kpool-own-mine"]);
    assert_eq!(ours(other_cluster.list_owned().await.unwrap()), ["kpool-own-theirs"]);
    assert_eq!(ours(team_b.list_owned().await.unwrap()), ["kpool-own-team-b"]);
    // EC2 does the filtering: other installations' machines never reach kpool.
    let listed = env.proxy.seen("DescribeInstances");
    let filtered = listed.iter().filter(|s| s.params.values().any(|v| v == &format!("tag:{TAG_INSTALLATION}")));
    assert!(filtered.count() >= 6, "two regions for each of three backends");
    for s in &listed {
        assert!(!s.response.contains("kpool-own-theirs") || !s.params.values().any(|v| v == INSTALLATION));
    }

    assert_eq!(ours(mine.list_unattributed().await.unwrap()), ["kpool-own-before"]);
    assert!(ours(team_b.list_unattributed().await.unwrap()).is_empty(), "an instance of ml/…, not of team-b");
    assert_eq!(before.list_owned().await.unwrap_err().category(), "InvalidConfig", "no owner, no list");
}

#[tokio::test]
async fn a_missing_or_unknown_image_is_invalid_config() {
    let env = Env::new().await;
    let mut config = env.config();
    config.image_id = None;
    let backend = AwsBackend::new("aws", config, catalog()).unwrap();
    let err = backend.create(&on_demand("kpool-no-image")).await.unwrap_err();
    assert!(matches!(&err, BackendError::InvalidConfig(m) if m.contains("image_id")), "{err:?}");
    assert!(env.proxy.seen("").is_empty(), "no EC2 call without an image");

    let mut config = env.config();
    config.image_id = Some("ami-0000000000000000f".into());
    let backend = AwsBackend::new("aws", config, catalog()).unwrap();
    let err = backend.create(&on_demand("kpool-bad-image")).await.unwrap_err();
    match &err {
        BackendError::InvalidConfig(m) => {
            assert!(m.contains("InvalidAMIID.NotFound") && m.contains("image_id"), "{m}")
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_instance_types_are_invalid_config() {
    let env = Env::new().await;
    let err = env.backend().create(&spec("kpool-bad-type", offer("us-east-1", "p99.huge", false))).await.unwrap_err();
    assert!(matches!(&err, BackendError::InvalidConfig(m) if m.contains("InvalidInstanceType")), "{err:?}");
}

#[tokio::test]
async fn capacity_errors_are_insufficient_capacity_and_launch_nothing() {
    let env = Env::new().await;
    let backend = env.backend();
    for (code, message) in [
        ("InsufficientInstanceCapacity", "We currently do not have sufficient t3.micro capacity in us-east-1a."),
        ("VcpuLimitExceeded", "You have requested more vCPU capacity than your current vCPU limit allows."),
    ] {
        env.proxy.fail_next("RunInstances", 1, Fault::Error { status: 500, code, message });
        let err = backend.create(&on_demand("kpool-no-capacity")).await.unwrap_err();
        match &err {
            BackendError::InsufficientCapacity(m) => {
                assert!(m.contains(code) && m.contains(message) && m.contains("t3.micro"), "{m}")
            }
            other => panic!("expected InsufficientCapacity, got {other:?}"),
        }
        assert!(matches!(backend.get("kpool-no-capacity").await, Err(BackendError::NotFound(_))));
    }
    assert!(env.proxy.seen("RunInstances").iter().all(|s| s.status == 500));
    // Capacity came back.
    let machine = backend.create(&on_demand("kpool-no-capacity")).await.unwrap();
    assert_eq!(machine.state, MachineState::Pending);
    assert_eq!(env.proxy.seen("RunInstances").len(), 3);
}

#[tokio::test]
async fn throttling_is_rate_limited() {
    let env = Env::new().await;
    let backend = env.backend();
    let fault = Fault::Error { status: 503, code: "RequestLimitExceeded", message: "Request limit exceeded." };
    env.proxy.fail_next("RunInstances", 1, fault.clone());
    let err = backend.create(&on_demand("kpool-throttled")).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::RateLimited { message, .. } if message.contains("RequestLimitExceeded")),
        "{err:?}"
    );
    env.proxy.fail_next("DescribeInstances", 1, fault);
    assert!(matches!(backend.get("kpool-throttled").await, Err(BackendError::RateLimited { .. })));
    // The throttled launch never reached EC2.
    assert!(matches!(backend.get("kpool-throttled").await, Err(BackendError::NotFound(_))));
}

#[tokio::test]
async fn server_errors_are_unanswered() {
    let env = Env::new().await;
    let backend = env.backend();
    let fault = Fault::Error { status: 500, code: "InternalError", message: "An internal error has occurred." };
    env.proxy.fail_next("DescribeInstances", 1, fault);
    let err = backend.get("kpool-server-error").await.unwrap_err();
    assert!(matches!(&err, BackendError::Unanswered(m) if m.contains("InternalError")), "{err:?}");
}

#[tokio::test]
async fn bad_credentials_are_invalid_config_and_never_shown() {
    let env = Env::new().await;
    let mut config = env.config();
    config.secret_access_key = "not-the-secret-key".into();
    let backend = AwsBackend::new("aws", config, catalog()).unwrap().with_owner(owner(INSTALLATION, "ml"));
    let err = backend.list_owned().await.unwrap_err();
    match &err {
        BackendError::InvalidConfig(m) => assert!(m.contains("AuthFailure"), "{m}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(!format!("{err:?}").contains("not-the-secret-key"));

    let mut config = env.config();
    config.access_key_id = "AKIAUNKNOWNUNKNOWN00".into();
    let backend = AwsBackend::new("aws", config, catalog()).unwrap();
    let err = backend.create(&on_demand("kpool-unknown-key")).await.unwrap_err();
    assert!(matches!(err, BackendError::InvalidConfig(_)), "{err:?}");

    // The good key works, and no request ever carried a secret.
    env.backend().list_owned().await.unwrap();
    for seen in env.proxy.seen("") {
        assert!(!seen.raw.contains(&env.moto.secret_access_key) && !seen.raw.contains("not-the-secret-key"));
    }
}

#[tokio::test]
async fn describe_instances_follows_next_token() {
    let env = Env::new().await;
    let backend = env.backend().with_page_size(5);
    let names: Vec<String> = (0..7).map(|i| format!("kpool-page-{i}")).collect();
    for name in &names {
        backend.create(&on_demand(name)).await.unwrap();
    }
    let owned = backend.list_owned().await.unwrap();
    for name in &names {
        assert!(owned.iter().any(|m| &m.name == name), "{name} listed");
    }
    let pages = env.proxy.seen("DescribeInstances");
    assert!(pages.iter().all(|p| p.params.get("MaxResults").map(String::as_str) == Some("5")));
    let followed = pages.iter().filter(|p| p.params.contains_key("NextToken")).count();
    assert!(followed >= 1, "at least one page after the first ({} pages)", pages.len());
}

#[tokio::test]
async fn a_launch_whose_answer_is_lost_is_unanswered_and_its_machine_is_found_by_name() {
    let env = Env::new().await;
    let backend = env.backend().with_timeout(Duration::from_millis(500));
    let lost = [Lost::Drop, Lost::Status(503), Lost::Hang(Duration::from_millis(1500))];
    for (i, lost) in lost.into_iter().enumerate() {
        let name = format!("kpool-lost-answer-{i}");
        env.proxy.fail_next("RunInstances", 1, Fault::LoseReply(lost));
        let err = backend.create(&on_demand(&name)).await.unwrap_err();
        assert!(err.outcome_unknown(), "{lost:?}: {err:?}");
        // The launch took effect: the machine is there, found by its name.
        let m = backend.get(&name).await.expect("the machine the lost launch started");
        assert!(matches!(m.state, MachineState::Pending | MachineState::Running), "{m:?}");
        backend.delete(&name).await.expect("delete");
    }
    // A refusal is not unknown: nothing was launched.
    let fault = Fault::Error { status: 400, code: "DryRunOperation", message: "refused" };
    env.proxy.fail_next("RunInstances", 1, fault);
    let err = backend.create(&on_demand("kpool-refused-launch")).await.unwrap_err();
    assert!(!err.outcome_unknown(), "{err:?}");
    assert!(matches!(backend.get("kpool-refused-launch").await, Err(BackendError::NotFound(_))));
}

#[tokio::test]
async fn slow_answers_time_out_as_unanswered() {
    let env = Env::new().await;
    let backend = env.backend().with_timeout(Duration::from_millis(300));
    env.proxy.fail_next("DescribeInstances", 2, Fault::Delay(Duration::from_millis(1500)));
    let err = backend.get("kpool-slow").await.unwrap_err();
    assert!(matches!(&err, BackendError::Unanswered(m) if m.contains("no answer from EC2 within")), "{err:?}");

    env.proxy.fail_next("DescribeInstances", 2, Fault::Delay(Duration::from_millis(500)));
    let patient = env.backend().with_timeout(Duration::from_secs(10));
    let started = std::time::Instant::now();
    assert!(matches!(patient.get("kpool-slow").await, Err(BackendError::NotFound(_))), "a slow answer is fine");
    assert!(started.elapsed() >= Duration::from_millis(500), "the answer was held back");
}

#[tokio::test]
async fn machines_are_found_in_every_configured_region() {
    let env = Env::new().await;
    env.backend().create(&spec("kpool-west", offer("us-west-2", "g5.xlarge", false))).await.unwrap();
    // A backend that never saw it looks everywhere; then it asks the right region first.
    let fresh = env.backend();
    assert_eq!(fresh.get("kpool-west").await.unwrap().state, MachineState::Running);
    let before = env.proxy.seen("DescribeInstances").len();
    fresh.get("kpool-west").await.unwrap();
    assert_eq!(env.proxy.seen("DescribeInstances").len(), before + 1, "one call once the region is known");
    fresh.delete("kpool-west").await.unwrap();
    let terminate = env.proxy.seen("TerminateInstances");
    assert_eq!(terminate.len(), 1);
    assert!(terminate[0].raw.contains("/us-west-2/ec2/aws4_request"), "signed for us-west-2");
}

#[tokio::test]
async fn requests_are_well_formed_query_calls() {
    let env = Env::new().await;
    env.backend().create(&on_demand("kpool-form")).await.unwrap();
    let launch = &env.proxy.seen("RunInstances")[0];
    let body = launch.raw.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(parse_form(body).get("Version").map(String::as_str), Some("2016-11-15"));
    let head = launch.raw.to_ascii_lowercase();
    assert!(head.contains("content-type: application/x-www-form-urlencoded; charset=utf-8"));
    assert!(head.contains("authorization: aws4-hmac-sha256 credential="));
    assert!(head.contains("signedheaders=content-type;host;x-amz-date"));
}

/// EC2's answer to a repeated `RunInstances`: the instance the token launched, as it is now.
fn replayed_launch(instance_id: &str, state: &str) -> Fault {
    let body = format!(
        "<RunInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId>\
         <reservationId>r-1</reservationId><instancesSet><item><instanceId>{instance_id}</instanceId>\
         <instanceState><code>0</code><name>{state}</name></instanceState></item></instancesSet>\
         </RunInstancesResponse>"
    );
    Fault::Respond { status: 200, body }
}

fn tokens(env: &Env) -> Vec<String> {
    env.proxy.seen("RunInstances").iter().map(|s| s.params["ClientToken"].clone()).collect()
}

#[tokio::test]
async fn a_token_whose_instance_is_gone_moves_on_to_the_next_token() {
    let env = Env::new().await;
    env.proxy.fail_next("RunInstances", 1, replayed_launch("i-0dead", "terminated"));
    let machine = env.backend().create(&on_demand("kpool-reborn")).await.unwrap();
    assert_eq!(machine.state, MachineState::Pending);
    assert_ne!(machine.provider_id, "i-0dead");
    let first = tokens(&env);
    assert_eq!(first.len(), 2);
    assert_eq!(first[0], "kpool-reborn");
    assert!(first[1].len() == 64 && first[1].chars().all(|c| c.is_ascii_hexdigit()), "{first:?}");

    // A retry that does not see the new instance (EC2's lists lag) walks the same tokens,
    // and the second one gives back the instance it launched.
    env.proxy.fail_next("DescribeInstances", 2, empty_describe());
    env.proxy.fail_next("RunInstances", 1, replayed_launch("i-0dead", "terminated"));
    env.proxy.fail_next("RunInstances", 1, replayed_launch(&machine.provider_id, "running"));
    let again = env.backend().create(&on_demand("kpool-reborn")).await.unwrap();
    assert_eq!(again.provider_id, machine.provider_id);
    assert_eq!(tokens(&env)[2..], first[..]);
    assert_eq!(count_instances(&env.instances_named("us-east-1", "kpool-reborn").await), 1);

    // A chain that never ends is cut short.
    env.proxy.fail_next("RunInstances", 5, replayed_launch("i-0dead", "terminated"));
    let err = env.backend().create(&on_demand("kpool-cursed")).await.unwrap_err();
    assert!(matches!(&err, BackendError::Other(m) if m.contains("client tokens")), "{err:?}");
    assert_eq!(tokens(&env).len(), 4 + 5);
}

fn empty_describe() -> Fault {
    let body = "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId>\
                <reservationSet/></DescribeInstancesResponse>";
    Fault::Respond { status: 200, body: body.into() }
}

fn mismatch() -> Fault {
    Fault::Error {
        status: 400,
        code: "IdempotentParameterMismatch",
        message: "The client token you have provided is associated with a resource that is already deleted.",
    }
}

#[tokio::test]
async fn a_token_used_by_another_launch_returns_its_live_instance_or_moves_on() {
    let env = Env::new().await;
    // Nothing alive holds the token: a new one is derived and the launch goes ahead.
    env.proxy.fail_next("RunInstances", 1, mismatch());
    let machine = env.backend().create(&on_demand("kpool-mismatch")).await.unwrap();
    assert_eq!(machine.state, MachineState::Pending);
    let tokens = tokens(&env);
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0], "kpool-mismatch");
    assert_ne!(tokens[1], tokens[0]);

    // A launch of another offer that EC2's lists do not show yet: the token refuses to
    // start a second machine and the live one is returned.
    env.proxy.fail_next("DescribeInstances", 2, empty_describe());
    env.proxy.fail_next("RunInstances", 1, mismatch());
    let other = spec("kpool-mismatch", offer("us-east-1", "t3.small", false));
    let same = env.backend().create(&other).await.unwrap();
    assert_eq!(same.provider_id, machine.provider_id);
    assert_eq!(env.proxy.seen("RunInstances").len(), 3, "no launch after the mismatch");
    assert_eq!(count_instances(&env.instances_named("us-east-1", "kpool-mismatch").await), 1);
}

#[tokio::test]
async fn the_boot_volume_is_sized_to_the_offers_disk() {
    let env = Env::new().await;
    let mut sized = on_demand("kpool-disk");
    sized.offer.disk = Some(120.0);
    let created = env.backend().create(&sized).await.unwrap();
    // The AMI's root device was read once and mapped to a gp3 volume of that size.
    let images = env.proxy.seen("DescribeImages");
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].params.get("ImageId.1"), Some(&env.moto.image_id));
    let run = env.proxy.seen("RunInstances");
    let params = &run.last().unwrap().params;
    assert_eq!(params.get("BlockDeviceMapping.1.Ebs.VolumeSize").map(String::as_str), Some("120"));
    assert!(params.get("BlockDeviceMapping.1.DeviceName").is_some_and(|d| d.starts_with("/dev/")), "{params:?}");
    // What EC2 made: a 120 GB volume attached to the instance.
    let mut p = Params::new();
    p.filter("attachment.instance-id", &[&created.provider_id]);
    let volumes = env.raw().call("us-east-1", "DescribeVolumes", &p).await.unwrap();
    assert!(volumes.contains("<size>120</size>"), "{volumes}");

    // Without a disk size, no mapping and no image lookup.
    env.backend().create(&on_demand("kpool-no-disk")).await.unwrap();
    assert_eq!(env.proxy.seen("DescribeImages").len(), 1);
    assert!(!env.proxy.seen("RunInstances").last().unwrap().params.contains_key("BlockDeviceMapping.1.DeviceName"));
}

#[tokio::test]
async fn a_disk_size_with_an_ami_the_region_lacks_is_invalid_config() {
    let env = Env::new().await;
    let mut cfg = env.config();
    cfg.image_id = Some("ami-0000000000000dead".into());
    let backend = AwsBackend::new("aws", cfg, catalog()).unwrap();
    let mut sized = on_demand("kpool-disk-bad-ami");
    sized.offer.disk = Some(50.0);
    match backend.create(&sized).await {
        Err(BackendError::InvalidConfig(msg)) => assert!(msg.contains("ami-0000000000000dead"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(env.proxy.seen("RunInstances").is_empty(), "nothing launched");
}
