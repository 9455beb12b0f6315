//! The production backend factory against the in-memory API: credentials from Secrets,
//! errors that name the field to fix.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kpool::api::backend::{
    Backend, BackendSpec, BackendType, Credentials, KubernetesBackendConfig, SecretRef, SshBackendConfig, SshHost,
};
use kpool::backends::allow::Allowances;
use kpool::backends::factory::DefaultFactory;
use kpool::backends::{BackendError, BackendFactory};
use kube::api::ObjectMeta;
use support::*;

/// An unencrypted OpenSSH ed25519 key made for these tests only.
const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBgcIzzgI01uA+VIDiLlxDIi1/sAF3yu9NxPXadvlRKlwAAAJDijsm24o7J
tgAAAAtzc2gtZWQyNTUxOQAAACBgcIzzgI01uA+VIDiLlxDIi1/sAF3yu9NxPXadvlRKlw
AAAEDRqOjLjj5XuAt8RgSbBhUd1p61d6iIQaIe1X78YaW96WBwjPOAjTW4D5UgOIuXEMiL
X+wAXfK703E9dp2+VEqXAAAACHRlc3Qta2V5AQIDBAU=
-----END OPENSSH PRIVATE KEY-----
";

fn ssh_backend(secret: &str) -> Backend {
    Backend::new(
        "hosts",
        BackendSpec {
            type_: BackendType::Ssh,
            credentials: Some(Credentials { secret_ref: SecretRef { name: secret.into() } }),
            ssh: Some(SshBackendConfig {
                hosts: vec![SshHost { host: "10.0.0.7".into(), ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

async fn secret(h: &Harness, name: &str, key: &str, value: &str) {
    let s = Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(BTreeMap::from([(key.to_string(), ByteString(value.as_bytes().to_vec()))])),
        type_: Some("kubernetes.io/ssh-auth".into()),
        ..Default::default()
    };
    h.create(s).await;
}

fn invalid(r: Result<std::sync::Arc<dyn kpool::backends::Backend>, BackendError>) -> String {
    match r {
        Err(BackendError::InvalidConfig(m)) => m,
        Err(e) => panic!("expected InvalidConfig, got {e}"),
        Ok(_) => panic!("expected InvalidConfig, got a backend"),
    }
}

#[tokio::test]
async fn an_ssh_backend_is_built_from_its_secret() {
    let h = Harness::new().await;
    secret(&h, "host-key", "ssh-privatekey", KEY).await;
    let obj = h.create(ssh_backend("host-key")).await;
    let factory = DefaultFactory::new(h.client.clone());
    let backend = factory.build(&obj).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backend.name(), "hosts");
}

#[tokio::test]
async fn a_missing_secret_or_key_names_the_field() {
    let h = Harness::new().await;
    let factory = DefaultFactory::new(h.client.clone());
    let obj = h.create(ssh_backend("nowhere")).await;
    let msg = invalid(factory.build(&obj).await);
    assert!(msg.contains("spec.credentials.secretRef") && msg.contains("nowhere"), "{msg}");

    secret(&h, "wrong-field", "id_rsa", KEY).await;
    let mut obj = ssh_backend("wrong-field");
    obj.metadata.name = Some("hosts2".into());
    let obj = h.create(obj).await;
    let msg = invalid(factory.build(&obj).await);
    assert!(msg.contains("ssh-privatekey"), "{msg}");

    let mut no_hosts = ssh_backend("wrong-field");
    no_hosts.metadata.name = Some("hosts3".into());
    no_hosts.spec.ssh = None;
    let obj = h.create(no_hosts).await;
    assert!(invalid(factory.build(&obj).await).starts_with("spec.ssh"));
}

fn aws_backend(catalog: &str) -> Backend {
    Backend::new(
        "ec2",
        BackendSpec {
            type_: BackendType::Aws,
            regions: vec!["us-east-1".into()],
            // Nothing listens there: offers() tries to refresh spot prices and must not
            // reach AWS from a test (nor fail when it cannot).
            endpoint: Some("http://127.0.0.1:9".into()),
            credentials: Some(Credentials { secret_ref: SecretRef { name: "aws-creds".into() } }),
            catalog: Some(kpool::api::backend::CatalogSource {
                config_map_ref: Some(kpool::api::backend::ConfigMapRef { name: catalog.into() }),
            }),
            aws: Some(kpool::api::backend::AwsBackendConfig {
                image_id: "ami-0123456789abcdef0".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn an_aws_backend_takes_its_offers_from_the_catalog_config_map() {
    let h = Harness::new().await;
    let creds = Secret {
        metadata: ObjectMeta { name: Some("aws-creds".into()), ..Default::default() },
        data: Some(BTreeMap::from([
            ("aws_access_key_id".to_string(), ByteString(b"AKIAEXAMPLE".to_vec())),
            ("aws_secret_access_key".to_string(), ByteString(b"not-a-real-secret".to_vec())),
        ])),
        ..Default::default()
    };
    h.create(creds).await;
    let csv = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/catalogs/sample/aws.csv")).unwrap();
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: ObjectMeta { name: Some("catalog".into()), ..Default::default() },
        data: Some(BTreeMap::from([("aws.csv".to_string(), csv)])),
        ..Default::default()
    };
    h.create(cm).await;
    // Nothing listens at the test's endpoint; the operator allows it all the same.
    let allowances = Allowances::default().with_endpoints(["http://127.0.0.1:9"]);
    let factory = DefaultFactory::new(h.client.clone()).with_allowances(allowances);
    let obj = h.create(aws_backend("catalog")).await;
    let backend = factory.build(&obj).await.unwrap_or_else(|e| panic!("{e}"));
    let req =
        kpool::api::resources::ResourcesSpec { gpu: Some("A10G".into()), ..Default::default() }.resolve().unwrap();
    let offers = backend.offers(&req).await.unwrap();
    assert!(!offers.is_empty());
    assert!(offers.iter().all(|o| o.backend == "ec2" && o.region == "us-east-1"), "{offers:?}");

    let mut missing = aws_backend("no-such-map");
    missing.metadata.name = Some("ec2-b".into());
    let obj = h.create(missing).await;
    let msg = invalid(factory.build(&obj).await);
    assert!(msg.contains("spec.catalog.configMapRef") && msg.contains("no-such-map"), "{msg}");
}

#[tokio::test]
async fn a_lambda_backend_is_built_from_its_api_key() {
    let h = Harness::new().await;
    let key = Secret {
        metadata: ObjectMeta { name: Some("lambda-key".into()), ..Default::default() },
        data: Some(BTreeMap::from([("api_key".to_string(), ByteString(b"secret_abc.123\n".to_vec()))])),
        ..Default::default()
    };
    h.create(key).await;
    let spec = BackendSpec {
        type_: BackendType::Lambda,
        regions: vec!["us-east-1".into()],
        credentials: Some(Credentials { secret_ref: SecretRef { name: "lambda-key".into() } }),
        ..Default::default()
    };
    let obj = h.create(Backend::new("lambda", spec.clone())).await;
    let factory = DefaultFactory::new(h.client.clone());
    let backend = factory.build(&obj).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backend.name(), "lambda");

    let mut wrong = Backend::new("lambda-b", spec);
    wrong.spec.credentials = Some(Credentials { secret_ref: SecretRef { name: "host-key".into() } });
    secret(&h, "host-key", "ssh-privatekey", KEY).await;
    let obj = h.create(wrong).await;
    let msg = invalid(factory.build(&obj).await);
    assert!(msg.contains("api_key"), "{msg}");
}

#[tokio::test]
async fn declared_ssh_host_keys_are_pinned_for_the_backend_and_the_job_runner() {
    let h = Harness::new().await;
    secret(&h, "host-key", "ssh-privatekey", KEY).await;
    let mut obj = ssh_backend("host-key");
    // Any valid public key will do: the one of the test's private key.
    let declared = russh::keys::decode_secret_key(KEY, None).unwrap().public_key().to_openssh().unwrap();
    let declared = declared.as_str();
    let host = &mut obj.spec.ssh.as_mut().unwrap().hosts[0];
    host.host_key = Some(declared.into());
    let (host_name, port) = (host.host.clone(), host.port.unwrap_or(22));
    let obj = h.create(obj).await;
    let factory = DefaultFactory::new(h.client.clone());
    let (_, _, known) = factory.ssh_login(&obj).await.unwrap();
    let expected =
        russh::keys::PublicKey::from_openssh(declared).unwrap().fingerprint(russh::keys::HashAlg::Sha256).to_string();
    assert_eq!(known.fingerprint(&host_name, port), Some(expected));

    let mut bad = ssh_backend("host-key");
    bad.metadata.name = Some("hosts-bad-key".into());
    bad.spec.ssh.as_mut().unwrap().hosts[0].host_key = Some("not a key".into());
    let bad = h.create(bad).await;
    let msg = invalid(factory.build(&bad).await);
    assert!(msg.starts_with("spec.ssh.hosts[0].hostKey"), "{msg}");
}

fn kubernetes_backend(name: &str, pods_in: Option<&str>) -> Backend {
    Backend::new(
        name,
        BackendSpec {
            type_: BackendType::Kubernetes,
            kubernetes: Some(KubernetesBackendConfig { namespace: pods_in.map(Into::into), ..Default::default() }),
            ..Default::default()
        },
    )
}

/// Run images and resolved secret values land where a kubernetes backend puts its Pods:
/// its own namespace, or one the operator allows.
#[tokio::test]
async fn a_kubernetes_backend_places_pods_only_in_namespaces_the_operator_allows() {
    let h = Harness::new().await;
    let factory = DefaultFactory::new(h.client.clone());
    for (name, pods_in) in [("own", None), ("own-named", Some(NS))] {
        let obj = h.create(kubernetes_backend(name, pods_in)).await;
        factory.build(&obj).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let outside = h.create(kubernetes_backend("outside", Some("kube-system"))).await;
    let msg = invalid(factory.build(&outside).await);
    assert!(msg.starts_with("spec.kubernetes.namespace: \"kube-system\" is not allowed"), "{msg}");
    assert!(msg.contains("--kubernetes-backend-namespaces"), "{msg}");

    let allowed = Allowances::default().with_kubernetes_namespaces(["kpool-machines", "kube-system"]);
    let factory = DefaultFactory::new(h.client.clone()).with_allowances(allowed);
    factory.build(&outside).await.unwrap_or_else(|e| panic!("{e}"));
    let other = h.create(kubernetes_backend("other", Some("team-b"))).await;
    assert!(invalid(factory.build(&other).await).contains("\"team-b\""));
}

/// A Lambda API key goes only to Lambda, and EC2 requests signed with the account's keys only
/// to EC2, unless the operator allows another endpoint; the Secret is not even read.
#[tokio::test]
async fn credentials_go_only_to_official_or_allowed_endpoints() {
    let h = Harness::new().await;
    let lambda = |name: &str, endpoint: Option<&str>| {
        Backend::new(
            name,
            BackendSpec {
                type_: BackendType::Lambda,
                regions: vec!["us-east-1".into()],
                endpoint: endpoint.map(Into::into),
                credentials: Some(Credentials { secret_ref: SecretRef { name: "no-such-secret".into() } }),
                ..Default::default()
            },
        )
    };
    let factory = DefaultFactory::new(h.client.clone());
    let collector = h.create(lambda("collector", Some("https://collector.example/api/v1"))).await;
    let msg = invalid(factory.build(&collector).await);
    assert!(msg.starts_with("spec.endpoint: \"https://collector.example/api/v1\" is not allowed"), "{msg}");
    assert!(msg.contains("https://cloud.lambda.ai/api/v1") && msg.contains("--allow-endpoint"), "{msg}");
    // The official endpoint passes the rule (and then fails on the missing Secret).
    let official = h.create(lambda("official", Some("https://cloud.lambda.ai/api/v1/"))).await;
    assert!(invalid(factory.build(&official).await).contains("no-such-secret"));

    let mut ec2 = aws_backend("no-such-map");
    ec2.spec.endpoint = Some("http://127.0.0.1:9".into());
    let ec2 = h.create(ec2).await;
    let msg = invalid(factory.build(&ec2).await);
    assert!(msg.contains("\"http://127.0.0.1:9\"") && msg.contains("https://ec2.us-east-1.amazonaws.com"), "{msg}");

    let allowed = Allowances::default().with_endpoints(["https://collector.example/api/v1", "http://127.0.0.1:9/"]);
    let factory = DefaultFactory::new(h.client.clone()).with_allowances(allowed);
    assert!(invalid(factory.build(&collector).await).contains("no-such-secret"), "allowed: on to the Secret");
    assert!(invalid(factory.build(&ec2).await).contains("aws-creds"), "allowed: on to the Secret");
}

/// The Backend controller's `Ready` and every instance trying the backend say why it
/// cannot be used, naming the field and the value.
#[tokio::test]
async fn a_backend_beyond_its_allowances_is_not_ready_and_instances_say_why() {
    let h = Harness::with_real_backends().await;
    h.create(kubernetes_backend("outside", Some("kube-system"))).await;
    let backends = kube::Api::<Backend>::namespaced(h.client.clone(), NS);
    // The first pass adds the finalizer, the second builds the backend and writes `Ready`.
    for _ in 0..2 {
        let current = backends.get("outside").await.unwrap();
        kpool::controllers::backend::reconcile(std::sync::Arc::new(current), h.ctx.clone()).await.unwrap();
    }
    let st = backends.get("outside").await.unwrap().status.unwrap();
    let ready = kpool::api::conditions::find(&st.conditions, "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidConfig"), "{ready:?}");
    assert!(ready.message.contains("spec.kubernetes.namespace: \"kube-system\" is not allowed"), "{ready:?}");

    let policy = kpool::api::policy::PolicySpec { backends: Some(vec!["outside".into()]), ..Default::default() };
    h.instance("box", kpool::api::instance::InstanceSpec { policy, ..Default::default() }).await;
    h.settle(2).await;
    let st = h.get_instance("box").await.status.unwrap();
    assert_ne!(st.phase, kpool::api::instance::InstancePhase::Idle);
    let ready = kpool::api::conditions::find(&st.conditions, "Ready").unwrap();
    assert!(ready.message.contains("spec.kubernetes.namespace: \"kube-system\""), "{ready:?}");
}
