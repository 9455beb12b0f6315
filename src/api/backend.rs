//! The `Backend` kind: where machines come from.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The kind of provider behind a `Backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendType {
    /// Pods in a Kubernetes cluster; needs no cloud credentials.
    #[default]
    Kubernetes,
    /// Hosts you bring yourself, reached over SSH.
    Ssh,
    /// Amazon EC2.
    Aws,
    /// Lambda Cloud.
    Lambda,
}

impl BackendType {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendType::Kubernetes => "kubernetes",
            BackendType::Ssh => "ssh",
            BackendType::Aws => "aws",
            BackendType::Lambda => "lambda",
        }
    }
}

/// A reference to a `Secret` in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SecretRef {
    /// Name of the `Secret`.
    pub name: String,
}

/// Credentials for the provider's API.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// The `Secret` (same namespace) that holds the credentials.
    pub secret_ref: SecretRef,
}

/// A reference to a `ConfigMap` in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConfigMapRef {
    /// Name of the `ConfigMap`.
    pub name: String,
}

/// Where the offer catalog comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogSource {
    /// A `ConfigMap` (same namespace) whose data keys are gpuhunt v2 CSV files
    /// (`aws.csv`, `lambdalabs.csv`, …). Without it, the backend's built-in catalog is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapRef>,
}

/// Settings of a `kubernetes` backend: each machine is a Pod pinned to a node of the
/// cluster kpool runs in, holding that node's CPU, memory and GPUs for the instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesBackendConfig {
    /// Namespace where the machine Pods are created. Defaults to the namespace of this
    /// `Backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Container image of the Pod that holds a machine's resources. Defaults to
    /// `registry.k8s.io/pause:3.10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Container image of a run that sets no `image`: the run's commands execute in a Pod
    /// of this image on the instance's node, with `sh`. Defaults to `ubuntu:24.04`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_image: Option<String>,
    /// Extended resource name under which nodes advertise GPUs. Defaults to
    /// `nvidia.com/gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_resource: Option<String>,
    /// Price reported for every offer of this backend, in US dollars per hour (used to
    /// rank it against other backends). Defaults to `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub price_per_hour: Option<f64>,
    /// Only nodes with all these labels are offered, and machine Pods carry this node
    /// selector. Empty: every schedulable, ready node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the machine Pods (and so of the runs' job Pods), as in a Pod spec.
    /// A node with a `NoSchedule` or `NoExecute` taint gives offers only when one of these
    /// tolerates that taint, e.g. `{key: dedicated, operator: Equal, value: ml, effect:
    /// NoSchedule}` for nodes set aside with `kubectl taint nodes … dedicated=ml:NoSchedule`.
    /// The GPU resource's taint needs none: a machine with GPUs tolerates it anyway. Empty:
    /// only untainted nodes (and GPU nodes for GPU machines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// Settings of an `ssh` backend: hosts you own, reached over SSH with the private key in
/// `spec.credentials.secretRef`. Each host is one offer, its whole CPU, memory, disk and
/// GPUs as probed over SSH. Add a host to a pool with an `Instance` whose `backends` is
/// this backend and whose `instanceTypes` is the host's name. kpool never runs anything
/// on a host to add or remove it, and never shuts it down.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshBackendConfig {
    /// The hosts of this backend. Host names (`name`, else `host`) must be unique.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new(
        "self.all(h, self.filter(o, (has(o.name) ? o.name : o.host) == (has(h.name) ? h.name : h.host)).size() == 1)"
    ).message("host names must be unique (a host without a name is named by its host)"))]
    pub hosts: Vec<SshHost>,
    /// How long to wait for a host to accept the connection and the login, in seconds.
    /// Defaults to `10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub connect_timeout_seconds: Option<u32>,
    /// Price reported for every host of this backend, in US dollars per hour (used to
    /// rank it against other backends). Defaults to `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub price_per_hour: Option<f64>,
}

/// One host of an `ssh` backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshHost {
    /// The host's name in kpool: the `instanceType` of its offer, which an `Instance`
    /// names in `instanceTypes` to take this host. Defaults to `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// DNS name or IP address of the host.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// SSH port. Defaults to `22`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// User to log in as. Defaults to `root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub user: Option<String>,
    /// The host's public host key, as in `known_hosts` or `ssh-keyscan` output without the
    /// host name (`ssh-ed25519 AAAA…`). When set, only this key is accepted; without it the
    /// first key the host shows is trusted and kept (in memory) for as long as kpool runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384))]
    pub host_key: Option<String>,
}

/// Where machines may come from, and how to reach the provider.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "kpool.dev",
    version = "v1alpha1",
    kind = "Backend",
    namespaced,
    derive = "Default",
    status = "BackendStatus",
    shortname = "kb",
    category = "kpool",
    doc = "A source of machines: a Kubernetes cluster, SSH hosts you own, or a cloud account.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Regions", type_ = "string", json_path = ".spec.regions"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'ssh' || (has(self.ssh) && has(self.credentials))")
    .message("an ssh backend needs spec.ssh (its hosts) and spec.credentials (the Secret with the private key)"))]
#[x_kube(validation = Rule::new("self.type != 'aws' || (has(self.aws) && has(self.credentials) && has(self.catalog) && has(self.regions) && size(self.regions) > 0)")
    .message("an aws backend needs spec.aws (the AMI), spec.credentials (the access key Secret), spec.catalog (the offers) and spec.regions"))]
#[x_kube(validation = Rule::new("self.type != 'lambda' || has(self.credentials)")
    .message("a lambda backend needs spec.credentials (the Secret with its API key under api_key)"))]
pub struct BackendSpec {
    /// The provider: `kubernetes`, `ssh`, `aws` or `lambda`.
    #[serde(rename = "type")]
    pub type_: BackendType,
    /// Regions where machines may be launched. Empty: every region in the catalog.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Credentials for the provider's API, from a `Secret` in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// The offer catalog: machine types and prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogSource>,
    /// Override of the provider's API endpoint (e.g. a private endpoint or an emulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Settings of a `kubernetes` backend (ignored by the other types). Optional: every
    /// setting has a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesBackendConfig>,
    /// Settings of an `ssh` backend (ignored by the other types); required for it, since it
    /// lists the hosts. The private key comes from `credentials.secretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshBackendConfig>,
    /// Settings of an `aws` backend (ignored by the other types); required for it. The
    /// access key comes from `credentials.secretRef` (keys `aws_access_key_id`,
    /// `aws_secret_access_key`, optional `aws_session_token`), the offers from `catalog`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsBackendConfig>,
    /// Settings of a `lambda` (Lambda Cloud) backend. The API key comes from
    /// `credentials.secretRef` (key `api_key`); offers and prices from the provider's API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<LambdaBackendConfig>,
}

/// Settings of a `lambda` (Lambda Cloud) backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LambdaBackendConfig {
    /// Names of SSH keys registered with Lambda Cloud to install on machines launched
    /// without a key of their own. kpool gives every instance its own key (registered under
    /// the machine name, deleted with the machine) and Lambda takes one key per launch, so
    /// instances of a Lambda backend carry only their own key; reach one by hand with the
    /// key in its Secret `<instance>-ssh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_key_names: Vec<String>,
    /// User kpool logs in as to run jobs on the machines. Defaults to `ubuntu` (Lambda
    /// Stack images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), extend("default" = "ubuntu"))]
    pub ssh_user: Option<String>,
    /// SSH port of the machines. Defaults to `22`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535), extend("default" = 22))]
    pub ssh_port: Option<u16>,
}

/// Settings of an `aws` (EC2) backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsBackendConfig {
    /// The AMI to launch, e.g. `ami-0abcdef1234567890` (one that exists in every region of
    /// `spec.regions`, or launches there fail with InvalidConfig).
    #[schemars(regex(pattern = r"^ami-[0-9a-f]{8,17}$"))]
    pub image_id: String,
    /// Subnet to launch into (default: the region's default VPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^subnet-[0-9a-f]{8,17}$"))]
    pub subnet_id: Option<String>,
    /// Security groups of the machines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    /// An SSH public key put into the machines' authorized keys at launch (cloud-init),
    /// next to the instance's own key, which kpool generates, keeps in the Secret
    /// `<instance>-ssh` and runs jobs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    /// User kpool logs in as to run jobs on the machines: the AMI's default user, which
    /// cloud-init gives the keys to. Defaults to `ubuntu` (Ubuntu AMIs; `ec2-user` on
    /// Amazon Linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), extend("default" = "ubuntu"))]
    pub ssh_user: Option<String>,
    /// SSH port of the machines. Defaults to `22`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535), extend("default" = 22))]
    pub ssh_port: Option<u16>,
    /// How often, in seconds, kpool reads the current spot prices of the spot offers from
    /// EC2 (`DescribeSpotPriceHistory`, the lowest across the region's availability zones)
    /// in place of the catalog's. Defaults to `600`. While EC2 cannot be asked (e.g. the
    /// access key lacks `ec2:DescribeSpotPriceHistory`), offers keep the prices they had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 86400), extend("default" = 600))]
    pub spot_price_refresh_seconds: Option<u32>,
}

/// User kpool logs in as on machines of `aws` and `lambda` backends unless `sshUser` says.
pub const DEFAULT_CLOUD_SSH_USER: &str = "ubuntu";
/// SSH port of machines of `aws` and `lambda` backends unless `sshPort` says.
pub const DEFAULT_CLOUD_SSH_PORT: u16 = 22;

impl BackendSpec {
    /// Whether instances of this backend are VMs that kpool reaches over SSH at their
    /// address, with a key of their own (`aws`, `lambda`).
    pub fn is_cloud_vm(&self) -> bool {
        matches!(self.type_, BackendType::Aws | BackendType::Lambda)
    }

    /// User and port to log in to an instance of a cloud VM backend ([`Self::is_cloud_vm`]).
    pub fn cloud_ssh(&self) -> (String, u16) {
        let (user, port) = match self.type_ {
            BackendType::Aws => self.aws.as_ref().map(|a| (a.ssh_user.clone(), a.ssh_port)).unwrap_or_default(),
            BackendType::Lambda => self.lambda.as_ref().map(|l| (l.ssh_user.clone(), l.ssh_port)).unwrap_or_default(),
            _ => (None, None),
        };
        (
            user.filter(|u| !u.is_empty()).unwrap_or_else(|| DEFAULT_CLOUD_SSH_USER.to_string()),
            port.unwrap_or(DEFAULT_CLOUD_SSH_PORT),
        )
    }
}

/// Observed state of a `Backend`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// `Ready`: whether the backend's configuration is valid and its offers could be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Number of offers in the backend's catalog at the last refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offers: Option<u32>,
}
