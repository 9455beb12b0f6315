//! `RunInstances`: the launch parameters and the client tokens that make a launch
//! idempotent.
//!
//! EC2 remembers a client token for at least 24 hours after the instance it launched is
//! terminated: repeating the request returns that instance (the same parameters) or fails
//! with `IdempotentParameterMismatch` (other parameters). The first token of a machine
//! is its name, so a retry after an unanswered launch gets the instance that launch
//! started, and a launch of another offer in the same region cannot start a second
//! machine. When the token's instance is gone (a spot instance reclaimed while starting,
//! a machine deleted and created again), the next token is derived from the previous
//! one and what blocked it, so every retry walks the same chain of tokens.

use base64::Engine;

use super::client::{from_xml, CallError, Params};
use super::errors::map_error;
use super::model::{Instance, RunInstancesResponse};
use super::{sigv4, AwsBackend, LIVE, MANAGED_BY, TAG_MACHINE};
use crate::backends::{BackendError, MachineSpec, TAG_MANAGED_BY};

/// How many tokens a launch tries before giving up.
const MAX_TOKENS: usize = 5;

impl AwsBackend {
    /// The `RunInstances` parameters of `spec`, but the client token.
    /// `root_device`: the AMI's root device, to size the boot volume to the offer's disk.
    pub(super) fn launch_params(&self, spec: &MachineSpec, image_id: &str, root_device: Option<&str>) -> Params {
        let mut p = Params::new();
        p.set("ImageId", image_id)
            .set("InstanceType", &spec.offer.instance_type)
            .set("MinCount", "1")
            .set("MaxCount", "1");
        let mut tags = spec.tags.clone();
        tags.insert("Name".into(), spec.name.clone());
        tags.insert(TAG_MACHINE.into(), spec.name.clone());
        tags.entry(TAG_MANAGED_BY.into()).or_insert_with(|| MANAGED_BY.into());
        if let Some(owner) = &self.owner {
            tags.extend(owner.tags());
        }
        for (n, resource) in ["instance", "volume"].iter().enumerate() {
            p.set(format!("TagSpecification.{}.ResourceType", n + 1), *resource);
            for (i, (k, v)) in tags.iter().enumerate() {
                p.set(format!("TagSpecification.{}.Tag.{}.Key", n + 1, i + 1), k);
                p.set(format!("TagSpecification.{}.Tag.{}.Value", n + 1, i + 1), v);
            }
        }
        if spec.offer.spot {
            p.set("InstanceMarketOptions.MarketType", "spot")
                .set("InstanceMarketOptions.SpotOptions.SpotInstanceType", "one-time")
                .set("InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior", "terminate");
        }
        let keys: Vec<&str> = self.ssh_public_key.iter().chain(&spec.ssh_public_key).map(String::as_str).collect();
        if !keys.is_empty() {
            p.set("UserData", user_data(&keys));
        }
        if let (Some(device), Some(gb)) = (root_device, spec.offer.disk) {
            p.set("BlockDeviceMapping.1.DeviceName", device)
                .set("BlockDeviceMapping.1.Ebs.VolumeSize", format!("{}", gb.ceil().max(1.0) as u64))
                .set("BlockDeviceMapping.1.Ebs.VolumeType", "gp3")
                .set("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true");
        }
        if let Some(subnet) = &self.subnet_id {
            p.set("SubnetId", subnet);
        }
        for (i, sg) in self.security_group_ids.iter().enumerate() {
            p.set(format!("SecurityGroupId.{}", i + 1), sg);
        }
        p
    }

    /// Launches the instance of `spec` (see the module docs).
    pub(super) async fn run_instance(
        &self,
        spec: &MachineSpec,
        image_id: &str,
        root_device: Option<&str>,
    ) -> Result<Instance, BackendError> {
        let region = &spec.offer.region;
        let context = format!("failed to launch {} in {region}", spec.offer.instance_type);
        let params = self.launch_params(spec, image_id, root_device);
        let mut token = first_token(&spec.name);
        for _ in 0..MAX_TOKENS {
            let mut request = params.clone();
            request.set("ClientToken", token.clone());
            match self.client.call(region, "RunInstances", &request).await {
                Ok(body) => {
                    let answer: RunInstancesResponse =
                        from_xml("RunInstances", &body).map_err(|e| map_error(&context, e))?;
                    let instance = answer.instances.items.into_iter().next().ok_or_else(|| {
                        BackendError::Unanswered(format!("{context}: RunInstances returned no instance"))
                    })?;
                    if !matches!(instance.instance_state.name.as_str(), "shutting-down" | "terminated") {
                        return Ok(instance);
                    }
                    let dead = &instance.instance_id;
                    tracing::info!(machine = %spec.name, instance = %dead, "client token taken by a gone instance");
                    token = next_token(&token, dead);
                }
                Err(CallError::Api { code, .. }) if code == "IdempotentParameterMismatch" => {
                    let mut live = self.find_in(std::slice::from_ref(region), &spec.name, &LIVE).await?;
                    if let Some((_, instance)) = live.pop() {
                        return Ok(instance);
                    }
                    token = next_token(&token, &request_digest(&params));
                }
                Err(e) => return Err(map_error(&context, e)),
            }
        }
        Err(BackendError::Other(format!("{context}: {MAX_TOKENS} client tokens were all used by earlier launches")))
    }
}

/// The first client token of machine `name` (at most 64 ASCII characters): the name, or
/// its SHA-256 when longer.
pub(super) fn first_token(name: &str) -> String {
    if name.len() <= 64 && name.is_ascii() {
        name.to_string()
    } else {
        sha256_hex(name)
    }
}

/// The token after `token`, which was blocked by `what` (an instance id, a digest).
pub(super) fn next_token(token: &str, what: &str) -> String {
    sha256_hex(&format!("{token}/{what}"))
}

fn request_digest(params: &Params) -> String {
    sha256_hex(&params.encode("RunInstances"))
}

fn sha256_hex(s: &str) -> String {
    sigv4::hex(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref())
}

/// Base64 cloud-config that authorises `keys` (the backend's, then the instance's own)
/// for the image's default user.
pub(super) fn user_data(keys: &[&str]) -> String {
    let mut text = String::from("#cloud-config\nssh_authorized_keys:\n");
    for key in keys {
        // A JSON string is a YAML scalar: no quoting rules to get wrong.
        let quoted = serde_json::to_string(key.trim()).expect("a string serialises");
        text.push_str(&format!("  - {quoted}\n"));
    }
    base64::engine::general_purpose::STANDARD.encode(text)
}
