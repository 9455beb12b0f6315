//! EC2 instances as machines.
//!
//! An `aws` backend offers the catalog it is given (gpuhunt's AWS offers, loaded by the
//! factory) in its configured regions, and turns an instance into one EC2 instance. It
//! talks to EC2's query API with its own small client ([`client`]): SigV4-signed POSTs
//! over hyper and rustls (ring), XML answers read with quick-xml.
//!
//! Spot prices (`offers`): the catalog's spot prices go stale, so `offers` gives each
//! spot offer EC2's current price, the lowest across the region's availability zones
//! (`DescribeSpotPriceHistory` with `ProductDescription` `Linux/UNIX` and `StartTime` =
//! now, read page by page, asking only for the types the catalog offers as spot in that
//! region). Each region's prices are read at most once per `spot_price_ttl` (10 minutes
//! unless set; `spec.aws.spotPriceRefreshSeconds`), lazily, by the `offers` call that
//! finds them due; calls meanwhile use what is known. A type EC2 gives no price for keeps
//! the catalog's. A refresh that fails (throttling, `UnauthorizedOperation`, no answer)
//! never fails `offers`: it logs one warning, the prices stay as they were (the catalog's
//! or the last refresh's), and the next try comes a TTL later. On-demand offers keep the
//! catalog's price.
//!
//! Machines (`create`, `get`, `delete`, `list_owned`):
//! - Every instance carries the tags of [`MachineSpec::tags`], `Name` = the machine name,
//!   [`TAG_MACHINE`] = the machine name, `kpool.dev/managed-by=kpool` (unless the spec
//!   sets it), and the backend's [`Owner`] (`kpool.dev/installation`, `kpool.dev/namespace`,
//!   set by [`AwsBackend::with_owner`]; they win over the spec's); its volumes carry the
//!   same tags.
//! - `create` is idempotent twice over: it first looks for an instance tagged with the
//!   machine name in state pending, running, stopping or stopped, in every configured
//!   region (a launch that timed out in one region must not be repeated in another), and
//!   returns it; otherwise it calls `RunInstances` in the offer's region with the offer's
//!   instance type, one instance, a client token that starts as the machine name (EC2
//!   answers a repeated launch with the instance it already started; the `launch` module
//!   says how tokens move on past dead instances), the spot market when the offer is spot
//!   (one-time, terminate on interruption), cloud-init user data whose
//!   `ssh_authorized_keys` hold the backend's SSH public key and the instance's own
//!   ([`MachineSpec::ssh_public_key`], the key kpool runs jobs with), and the subnet and
//!   security groups when set. EC2 cannot change user data of a running instance: an
//!   instance found by `create` keeps the keys it was launched with.
//! - `get` looks the instance up by [`TAG_MACHINE`] in the region it was last seen in,
//!   then in every region; when several carry the name, the most alive wins (running,
//!   pending, stopping/stopped, shutting-down, terminated), then the newest. States:
//!   pending -> Pending, running -> Running (address = the public IPv4, else the private
//!   one), shutting-down/stopping/stopped -> Stopping, terminated -> Terminated (EC2 keeps
//!   terminated instances for about an hour); none -> NotFound.
//! - `delete` terminates every instance of that name that is not terminated yet, in every
//!   region (so a double launch cannot leak); none -> NotFound.
//! - `list_owned` lists the instances tagged with the backend's owner
//!   (`tag:kpool.dev/installation` and `tag:kpool.dev/namespace` filters, so EC2 never
//!   even returns other installations' machines), in every region, except terminated
//!   ones; without an owner it is InvalidConfig. `list_unattributed` lists the instances
//!   with a `kpool.dev/managed-by` tag and a `kpool.dev/instance` tag of the owner's
//!   namespace (`ns/*`) that carry no `kpool.dev/installation` tag (launched before
//!   machines carried one). `DescribeInstances` is always read page by page.
//!
//! Errors (EC2 error codes): `Insufficient*Capacity`, `SpotMaxPriceTooLow`,
//! `MaxSpotInstanceCountExceeded`, `Unsupported`, `InstanceLimitExceeded`,
//! `VcpuLimitExceeded` -> InsufficientCapacity (the caller moves on to its next offer);
//! `RequestLimitExceeded`, `Throttling` -> RateLimited; credential, permission and
//! parameter errors (`AuthFailure`, `UnauthorizedOperation`, `InvalidAMIID.*`,
//! `InvalidKeyPair.*`, `InvalidSubnetID.*`, `InvalidParameterValue`, …) -> InvalidConfig;
//! `InvalidInstanceID.NotFound` -> NotFound; 5xx of no code above and transport failures
//! (including no answer within the timeout, and an unreadable answer) -> Unanswered (EC2
//! may have acted: the controller looks a launch up before it tries anything else);
//! anything else -> Other. Messages carry the AWS code and message, never a credential.
//!
//! Permissions: `ec2:DescribeInstances`, `ec2:DescribeImages`, `ec2:RunInstances`,
//! `ec2:CreateTags` (tags at launch), `ec2:TerminateInstances`,
//! `ec2:DescribeSpotPriceHistory` (live spot prices; without it the catalog's apply).
//!
//! Boot disk: catalog offers without a `disk_size` take the requirement's minimum disk
//! (`offers`); a launch with a disk size reads the AMI's root device name
//! (`DescribeImages`, once per region) and maps it to a gp3 volume of that many GB
//! (rounded up), deleted with the instance. Without a disk size the AMI's default applies.
//!
//! Limits: offers are the catalog's, not checked against the account's quotas or the
//! region's instance types.

pub mod client;
mod errors;
mod launch;
mod model;
pub mod sigv4;
mod spot;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use self::client::{from_xml, Ec2Client, Params};
use self::errors::map_error;
use self::model::{machine_of, state_rank, DescribeInstancesResponse, Instance};
use self::sigv4::Credentials;
use self::spot::SpotPrices;
pub use self::spot::DEFAULT_SPOT_PRICE_TTL;
use super::{
    Backend, BackendError, Machine, MachineRef, MachineSpec, Owner, TAG_INSTALLATION, TAG_INSTANCE, TAG_MANAGED_BY,
    TAG_NAMESPACE,
};
use crate::api::offer::Offer;
use crate::api::resources::Requirements;
use crate::clock::Clock;

/// Tag carrying the machine name on every instance and volume.
pub const TAG_MACHINE: &str = "kpool.dev/machine";
/// Value of the `kpool.dev/managed-by` tag when the spec does not set one.
pub const MANAGED_BY: &str = "kpool";
/// How long one EC2 call may take, answer included, unless set with
/// [`AwsBackend::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Instances per `DescribeInstances` page unless set with [`AwsBackend::with_page_size`].
pub const DEFAULT_PAGE_SIZE: u32 = 1000;

/// States in which an instance counts as the machine `create` would launch.
const LIVE: [&str; 4] = ["pending", "running", "stopping", "stopped"];
/// Every state but terminated.
const NOT_TERMINATED: [&str; 5] = ["pending", "running", "shutting-down", "stopping", "stopped"];

/// How to reach EC2 and what to launch. Built by the factory from a `Backend` object of
/// type `aws` and its credentials `Secret`.
#[derive(Clone, Default, PartialEq)]
pub struct AwsConfig {
    /// Regions machines may run in, e.g. `us-east-1`; at least one. Offers outside them
    /// are dropped, and machines are looked for in all of them.
    pub regions: Vec<String>,
    /// An EC2 endpoint URL used for every region instead of AWS's
    /// (`https://ec2.REGION.amazonaws.com/`), e.g. a VPC endpoint or a local emulator.
    pub endpoint: Option<String>,
    /// Access key id of the IAM user or role.
    pub access_key_id: String,
    /// Its secret access key. Never logged.
    pub secret_access_key: String,
    /// Session token of temporary credentials (STS). Never logged.
    pub session_token: Option<String>,
    /// The AMI to launch, e.g. `ami-0abcdef1234567890`; it must exist in every region of
    /// `regions`. Required to launch machines (finding and deleting them works without).
    pub image_id: Option<String>,
    /// An SSH public key (`ssh-ed25519 AAAA… comment`) that cloud-init authorises for the
    /// image's default user.
    pub ssh_public_key: Option<String>,
    /// Subnet to launch into (it fixes the availability zone); the default VPC's otherwise.
    pub subnet_id: Option<String>,
    /// Security groups of the instances (ids, `sg-…`); the VPC's default group otherwise.
    pub security_group_ids: Vec<String>,
    /// How long spot prices read from EC2 are used before they are read again;
    /// [`DEFAULT_SPOT_PRICE_TTL`] when unset.
    pub spot_price_ttl: Option<Duration>,
}

impl fmt::Debug for AwsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsConfig")
            .field("regions", &self.regions)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("image_id", &self.image_id)
            .field("ssh_public_key", &self.ssh_public_key)
            .field("subnet_id", &self.subnet_id)
            .field("security_group_ids", &self.security_group_ids)
            .field("spot_price_ttl", &self.spot_price_ttl)
            .finish()
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct AwsBackend {
    name: String,
    regions: Vec<String>,
    image_id: Option<String>,
    ssh_public_key: Option<String>,
    subnet_id: Option<String>,
    security_group_ids: Vec<String>,
    offers: Vec<Offer>,
    /// Whose machines these are (see [`AwsBackend::with_owner`]).
    owner: Option<Owner>,
    /// Live prices of the spot offers.
    spot: SpotPrices,
    client: Ec2Client,
    page_size: u32,
    /// Region each machine was last seen in.
    seen_in: Mutex<HashMap<String, String>>,
    /// Root device name of the AMI, by region (read once with `DescribeImages`).
    root_devices: Mutex<HashMap<String, String>>,
}

impl AwsBackend {
    /// Builds the backend `name` (offers carry it) with the offer catalog `offers`.
    pub fn new(name: &str, config: AwsConfig, offers: Vec<Offer>) -> Result<AwsBackend, BackendError> {
        if config.regions.is_empty() {
            return Err(invalid("regions", "at least one region is required"));
        }
        let regions = super::region_names(&config.regions).map_err(|e| invalid("regions", &e))?;
        if config.access_key_id.trim().is_empty() || config.secret_access_key.trim().is_empty() {
            return Err(invalid("credentials", "access_key_id and secret_access_key are required"));
        }
        let image_id = config.image_id.filter(|i| !i.trim().is_empty());
        if let Some(image) = &image_id {
            if !image.starts_with("ami-") {
                return Err(invalid("image_id", &format!("{image:?} is not an AMI id (ami-…)")));
            }
        }
        let ssh_public_key = config.ssh_public_key.map(|k| k.trim().to_string()).filter(|k| !k.is_empty());
        if ssh_public_key.as_deref().is_some_and(|k| !is_public_key_line(k)) {
            return Err(invalid("ssh_public_key", "must be one line: TYPE KEY [COMMENT]"));
        }
        let credentials = Credentials {
            access_key_id: config.access_key_id.trim().to_string(),
            secret_access_key: config.secret_access_key.trim().to_string(),
            session_token: config.session_token.filter(|t| !t.is_empty()),
        };
        let client = Ec2Client::new(credentials, config.endpoint.as_deref().filter(|e| !e.is_empty()), DEFAULT_TIMEOUT)
            .map_err(BackendError::InvalidConfig)?;
        let offers: Vec<Offer> = offers
            .into_iter()
            .filter(|o| regions.contains(&o.region))
            .map(|o| Offer { backend: name.to_string(), ..o })
            .collect();
        let spot = SpotPrices::new(&offers, config.spot_price_ttl.unwrap_or(DEFAULT_SPOT_PRICE_TTL));
        Ok(AwsBackend {
            name: name.to_string(),
            regions,
            image_id,
            ssh_public_key,
            subnet_id: config.subnet_id.filter(|s| !s.is_empty()),
            security_group_ids: config.security_group_ids,
            offers,
            owner: None,
            spot,
            client,
            page_size: DEFAULT_PAGE_SIZE,
            seen_in: Mutex::new(HashMap::new()),
            root_devices: Mutex::new(HashMap::new()),
        })
    }

    /// Sets whose machines this backend launches and lists: every machine it launches is
    /// tagged with `owner`, and `list_owned` lists only machines tagged so.
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Sets how long one EC2 call may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.client.set_timeout(timeout);
        self
    }

    /// Sets the clock that decides when spot prices are due for a refresh.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.spot.set_clock(clock);
        self
    }

    /// Sets the page size of `DescribeInstances` and `DescribeSpotPriceHistory` (EC2
    /// accepts 5 to 1000).
    pub fn with_page_size(mut self, size: u32) -> Self {
        self.page_size = size.clamp(5, 1000);
        self
    }

    /// Of `regions`, the one `name` was last seen in (when known), and the others.
    fn regions_for(&self, name: &str, regions: &[String]) -> (Option<String>, Vec<String>) {
        let seen = self.seen_in.lock().expect("seen_in").get(name).cloned().filter(|r| regions.contains(r));
        let others = regions.iter().filter(|r| Some(*r) != seen.as_ref()).cloned().collect();
        (seen, others)
    }

    /// The regions `machine` is looked for in: the one it was launched in (recorded on its
    /// instance; searched even when `spec.regions` no longer lists it), then the configured
    /// ones. A recorded region that is not a region name is InvalidConfig, never "not found".
    fn regions_of(&self, machine: &MachineRef) -> Result<Vec<String>, BackendError> {
        let mut regions = match &machine.region {
            Some(r) => super::region_names(std::slice::from_ref(r))
                .map_err(|e| invalid("the instance's status.offer.region", &e))?,
            None => Vec::new(),
        };
        for r in &self.regions {
            if !regions.contains(r) {
                regions.push(r.clone());
            }
        }
        Ok(regions)
    }

    /// The root device name of the AMI in `region` (`DescribeImages`, cached). An AMI the
    /// region does not have is InvalidConfig.
    async fn root_device(&self, region: &str, image_id: &str) -> Result<String, BackendError> {
        if let Some(d) = self.root_devices.lock().expect("root_devices").get(region) {
            return Ok(d.clone());
        }
        let mut p = Params::new();
        p.set("ImageId.1", image_id);
        let context = format!("failed to read AMI {image_id} in {region}");
        let body = self.client.call(region, "DescribeImages", &p).await.map_err(|e| map_error(&context, e))?;
        let answer: model::DescribeImagesResponse =
            client::from_xml("DescribeImages", &body).map_err(|e| map_error(&context, e))?;
        let device = answer
            .images
            .items
            .into_iter()
            .find(|i| i.image_id == image_id)
            .and_then(|i| i.root_device_name)
            .ok_or_else(|| {
                invalid("image_id", &format!("AMI {image_id} not found in {region} (or it has no root device)"))
            })?;
        self.root_devices.lock().expect("root_devices").insert(region.to_string(), device.clone());
        Ok(device)
    }

    /// Reads the spot prices of the regions whose prices are due (see [`spot`]). A
    /// failure is logged and leaves the prices as they were until the next try.
    async fn refresh_spot_prices(&self) {
        let now = self.spot.now();
        let due = self.spot.claim_due(now);
        let fetched = futures::future::join_all(
            due.iter().map(|(region, types)| spot::fetch(&self.client, region, types, now, self.page_size)),
        )
        .await;
        for ((region, types), result) in due.iter().zip(fetched) {
            match result {
                Ok(prices) => {
                    tracing::debug!(backend = %self.name, %region, types = types.len(), priced = prices.len(), "spot prices refreshed");
                    self.spot.store(region, prices);
                }
                Err(e) => tracing::warn!(
                    backend = %self.name,
                    %region,
                    error = %e,
                    "failed to refresh spot prices; spot offers keep their previous prices until the next try"
                ),
            }
        }
    }

    fn remember(&self, name: &str, region: &str) {
        self.seen_in.lock().expect("seen_in").insert(name.to_string(), region.to_string());
    }

    /// Every instance matching `params` in `region`, page by page.
    async fn describe(&self, region: &str, params: &Params) -> Result<Vec<Instance>, BackendError> {
        let mut instances = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut page = params.clone();
            page.set("MaxResults", self.page_size.to_string());
            if let Some(t) = &token {
                page.set("NextToken", t.clone());
            }
            let body = self
                .client
                .call(region, "DescribeInstances", &page)
                .await
                .map_err(|e| map_error(&format!("failed to describe instances in {region}"), e))?;
            let answer: DescribeInstancesResponse = from_xml("DescribeInstances", &body)
                .map_err(|e| map_error(&format!("failed to describe instances in {region}"), e))?;
            instances.extend(answer.reservations.items.into_iter().flat_map(|r| r.instances.items));
            match answer.next_token.filter(|t| !t.is_empty()) {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                _ => return Ok(instances),
            }
        }
    }

    /// Instances named `name` in one of `states` (any state when empty), in `regions`.
    async fn find_in(
        &self,
        regions: &[String],
        name: &str,
        states: &[&str],
    ) -> Result<Vec<(String, Instance)>, BackendError> {
        let mut params = Params::new();
        params.filter(&format!("tag:{TAG_MACHINE}"), &[name]);
        if !states.is_empty() {
            params.filter("instance-state-name", states);
        }
        let found = futures::future::try_join_all(regions.iter().map(|r| self.describe(r, &params))).await?;
        Ok(regions.iter().zip(found).flat_map(|(r, list)| list.into_iter().map(move |i| (r.clone(), i))).collect())
    }

    /// The best instance named `name` in one of `states`: the region it was last seen in
    /// is asked first, then the others.
    async fn find(
        &self,
        regions: &[String],
        name: &str,
        states: &[&str],
    ) -> Result<Option<(String, Instance)>, BackendError> {
        let (seen, others) = self.regions_for(name, regions);
        let mut found = match &seen {
            Some(region) => self.find_in(std::slice::from_ref(region), name, states).await?,
            None => Vec::new(),
        };
        if found.is_empty() {
            found = self.find_in(&others, name, states).await?;
        }
        let best = found.into_iter().min_by(|(_, a), (_, b)| {
            state_rank(&a.instance_state.name)
                .cmp(&state_rank(&b.instance_state.name))
                .then_with(|| b.launch_time.cmp(&a.launch_time))
        });
        if let Some((region, _)) = &best {
            self.remember(name, region);
        }
        Ok(best)
    }
}

#[async_trait]
impl Backend for AwsBackend {
    fn name(&self) -> &str {
        &self.name
    }

    /// The catalog's offers, spot ones at EC2's current price when known (refreshed here
    /// when due; never an error); an offer whose disk is chosen at launch (no
    /// `disk_size`) gets the requirement's minimum disk, which the launch then sizes the
    /// boot volume to.
    async fn offers(&self, req: &Requirements) -> Result<Vec<Offer>, BackendError> {
        self.refresh_spot_prices().await;
        let disk = req.disk.as_ref().and_then(|d| d.min);
        let mut offers: Vec<Offer> = self.offers.iter().map(|o| Offer { disk: o.disk.or(disk), ..o.clone() }).collect();
        self.spot.apply(&mut offers);
        Ok(offers)
    }

    async fn create(&self, spec: &MachineSpec) -> Result<Machine, BackendError> {
        let offer = &spec.offer;
        if !self.regions.contains(&offer.region) {
            return Err(BackendError::InvalidConfig(format!(
                "offer region {:?} is not one of the backend's regions {:?}",
                offer.region, self.regions
            )));
        }
        if offer.instance_type.is_empty() {
            return Err(BackendError::InvalidConfig("offer has no instance type".into()));
        }
        if spec.ssh_public_key.as_deref().is_some_and(|k| !is_public_key_line(k)) {
            return Err(BackendError::InvalidConfig("the instance's SSH public key is not one line".into()));
        }
        let Some(image_id) = self.image_id.as_deref() else {
            return Err(invalid("image_id", "the AMI to launch is not set"));
        };
        if let Some((_, instance)) = self.find(&self.regions, &spec.name, &LIVE).await? {
            return Ok(machine_of(&instance));
        }
        let root_device = match spec.offer.disk {
            Some(_) => Some(self.root_device(&offer.region, image_id).await?),
            None => None,
        };
        let instance = self.run_instance(spec, image_id, root_device.as_deref()).await?;
        self.remember(&spec.name, &offer.region);
        tracing::info!(machine = %spec.name, instance = %instance.instance_id, region = %offer.region, "launched");
        Ok(machine_of(&instance))
    }

    async fn get(&self, name: &str) -> Result<Machine, BackendError> {
        self.get_at(&MachineRef::named(name)).await
    }

    async fn delete(&self, name: &str) -> Result<(), BackendError> {
        self.delete_at(&MachineRef::named(name)).await
    }

    async fn get_at(&self, machine: &MachineRef) -> Result<Machine, BackendError> {
        let name = machine.name.as_str();
        let regions = self.regions_of(machine)?;
        match self.find(&regions, name, &[]).await? {
            Some((_, instance)) => Ok(machine_of(&instance)),
            None => {
                self.seen_in.lock().expect("seen_in").remove(name);
                Err(BackendError::NotFound(format!(
                    "no EC2 instance tagged {TAG_MACHINE}={name} in {}",
                    regions.join(", ")
                )))
            }
        }
    }

    async fn delete_at(&self, machine: &MachineRef) -> Result<(), BackendError> {
        let name = machine.name.as_str();
        let regions = self.regions_of(machine)?;
        let found = self.find_in(&regions, name, &NOT_TERMINATED).await?;
        if found.is_empty() {
            return Err(BackendError::NotFound(format!(
                "no live EC2 instance tagged {TAG_MACHINE}={name} in {}",
                regions.join(", ")
            )));
        }
        let mut by_region: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (region, instance) in &found {
            by_region.entry(region).or_default().push(&instance.instance_id);
        }
        for (region, ids) in by_region {
            let mut p = Params::new();
            for (i, id) in ids.iter().enumerate() {
                p.set(format!("InstanceId.{}", i + 1), *id);
            }
            let context = format!("failed to terminate {} in {region}", ids.join(", "));
            self.client.call(region, "TerminateInstances", &p).await.map_err(|e| map_error(&context, e))?;
            tracing::info!(machine = %name, instances = ?ids, %region, "terminating");
        }
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<Machine>, BackendError> {
        let owner = self.owner()?;
        let mut params = Params::new();
        params
            .filter(&format!("tag:{TAG_INSTALLATION}"), &[owner.installation.as_str()])
            .filter(&format!("tag:{TAG_NAMESPACE}"), &[owner.namespace.as_str()])
            .filter("instance-state-name", &NOT_TERMINATED);
        let machines = self.list(&params).await?;
        // EC2 filtered already; a machine that is not the owner's never leaves here.
        Ok(machines.into_iter().filter(|m| owner.owns(&m.tags)).collect())
    }

    async fn list_unattributed(&self) -> Result<Vec<Machine>, BackendError> {
        let owner = self.owner()?;
        let mut params = Params::new();
        params
            .filter("tag-key", &[TAG_MANAGED_BY])
            .filter(&format!("tag:{TAG_INSTANCE}"), &[format!("{}/*", owner.namespace).as_str()])
            .filter("instance-state-name", &NOT_TERMINATED);
        let machines = self.list(&params).await?;
        Ok(machines.into_iter().filter(|m| super::unattributed_in(&m.tags, &owner.namespace)).collect())
    }
}

impl AwsBackend {
    fn owner(&self) -> Result<&Owner, BackendError> {
        self.owner.as_ref().ok_or_else(|| {
            invalid("owner", "no installation identity: this backend cannot tell its machines from others'")
        })
    }

    /// The machines `params` select in every region, remembering where each was seen.
    async fn list(&self, params: &Params) -> Result<Vec<Machine>, BackendError> {
        let found = futures::future::try_join_all(self.regions.iter().map(|r| self.describe(r, params))).await?;
        let mut machines = Vec::new();
        for (region, instances) in self.regions.iter().zip(found) {
            for instance in instances {
                let machine = machine_of(&instance);
                self.remember(&machine.name, region);
                machines.push(machine);
            }
        }
        Ok(machines)
    }
}

/// Whether `key` looks like one `authorized_keys` line: `TYPE KEY [COMMENT]`.
fn is_public_key_line(key: &str) -> bool {
    let key = key.trim();
    !key.contains('\n') && !key.contains('\r') && key.split_whitespace().count() >= 2
}

fn invalid(field: &str, why: &str) -> BackendError {
    BackendError::InvalidConfig(format!("{field}: {why}"))
}

#[cfg(test)]
mod tests;
