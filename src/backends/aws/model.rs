//! The parts of EC2's XML answers kpool reads. Unknown elements are ignored.

use serde::Deserialize;

use super::TAG_MACHINE;
use crate::backends::{Machine, MachineState};

/// A `<xxxSet><item>…</item>…</xxxSet>` list.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ItemSet<T> {
    #[serde(rename = "item", default = "Vec::new")]
    pub items: Vec<T>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct DescribeInstancesResponse {
    #[serde(rename = "reservationSet", default = "ItemSet::default")]
    pub reservations: ItemSet<Reservation>,
    #[serde(rename = "nextToken", default)]
    pub next_token: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Reservation {
    #[serde(rename = "instancesSet", default = "ItemSet::default")]
    pub instances: ItemSet<Instance>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct DescribeImagesResponse {
    #[serde(rename = "imagesSet", default = "ItemSet::default")]
    pub images: ItemSet<Image>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub image_id: String,
    /// The device of the root volume, e.g. `/dev/sda1` (Ubuntu) or `/dev/xvda` (Amazon Linux).
    #[serde(default)]
    pub root_device_name: Option<String>,
}

/// One page of `DescribeSpotPriceHistory`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct DescribeSpotPriceHistoryResponse {
    #[serde(rename = "spotPriceHistorySet", default = "ItemSet::default")]
    pub prices: ItemSet<SpotPrice>,
    /// Empty or absent on the last page.
    #[serde(rename = "nextToken", default)]
    pub next_token: Option<String>,
}

/// The spot price of one instance type in one availability zone from `timestamp` on.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpotPrice {
    pub instance_type: String,
    #[serde(default)]
    pub availability_zone: String,
    /// US dollars per hour, as a decimal string (`0.356700`).
    pub spot_price: String,
    /// ISO 8601, e.g. `2026-11-29T03:16:32.000Z`.
    #[serde(default)]
    pub timestamp: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RunInstancesResponse {
    #[serde(rename = "instancesSet", default = "ItemSet::default")]
    pub instances: ItemSet<Instance>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub instance_id: String,
    #[serde(default)]
    pub instance_state: InstanceState,
    #[serde(default)]
    pub private_ip_address: Option<String>,
    /// The public IPv4 address.
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default = "ItemSet::default")]
    pub tag_set: ItemSet<Tag>,
    /// ISO 8601, e.g. `2026-11-29T03:16:32.000Z`.
    #[serde(default)]
    pub launch_time: Option<String>,
    /// `spot` for spot instances.
    #[serde(default)]
    pub instance_lifecycle: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct InstanceState {
    /// `pending`, `running`, `shutting-down`, `terminated`, `stopping` or `stopped`.
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

impl Instance {
    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tag_set.items.iter().find(|t| t.key == key).map(|t| t.value.as_str())
    }
}

/// The machine an instance stands for.
pub fn machine_of(instance: &Instance) -> Machine {
    let state = match instance.instance_state.name.as_str() {
        "running" => MachineState::Running,
        "shutting-down" | "stopping" | "stopped" => MachineState::Stopping,
        "terminated" => MachineState::Terminated,
        _ => MachineState::Pending,
    };
    let address = (state == MachineState::Running)
        .then(|| {
            [&instance.ip_address, &instance.private_ip_address].into_iter().flatten().find(|a| !a.is_empty()).cloned()
        })
        .flatten();
    let name = instance.tag(TAG_MACHINE).or_else(|| instance.tag("Name")).unwrap_or(&instance.instance_id);
    Machine {
        name: name.to_string(),
        provider_id: instance.instance_id.clone(),
        state,
        address,
        tags: instance.tag_set.items.iter().map(|t| (t.key.clone(), t.value.clone())).collect(),
    }
}

/// Lower is more alive.
pub fn state_rank(state: &str) -> u8 {
    match state {
        "running" => 0,
        "pending" => 1,
        "stopping" | "stopped" => 2,
        "shutting-down" => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::aws::client::from_xml;

    // Trimmed from a moto 5.2 answer; AWS's has the same shape.
    const DESCRIBE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>fdcdcab1-ae5c-489e-9c33-4637c5dda355</requestId>
  <reservationSet>
    <item>
      <reservationId>r-1</reservationId>
      <groupSet></groupSet>
      <instancesSet>
        <item>
          <instanceId>i-1</instanceId>
          <imageId>ami-1</imageId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <privateIpAddress>10.0.0.5</privateIpAddress>
          <ipAddress>54.1.2.3</ipAddress>
          <groupSet><item><groupId>sg-1</groupId></item></groupSet>
          <blockDeviceMapping><item><deviceName>/dev/sda1</deviceName></item></blockDeviceMapping>
          <launchTime>2026-11-29T03:16:32.000Z</launchTime>
          <instanceLifecycle>spot</instanceLifecycle>
          <tagSet>
            <item><key>Name</key><value>kpool-a</value></item>
            <item><key>kpool.dev/instance</key><value>ml/a &amp; b</value></item>
          </tagSet>
        </item>
        <item>
          <instanceId>i-2</instanceId>
          <instanceState><code>0</code><name>pending</name></instanceState>
          <tagSet/>
        </item>
      </instancesSet>
    </item>
    <item><reservationId>r-2</reservationId><instancesSet/></item>
  </reservationSet>
  <nextToken>tok-1</nextToken>
</DescribeInstancesResponse>"#;

    #[test]
    fn decodes_describe_instances() {
        let r: DescribeInstancesResponse = from_xml("DescribeInstances", DESCRIBE).unwrap();
        assert_eq!(r.next_token.as_deref(), Some("tok-1"));
        assert_eq!(r.reservations.items.len(), 2);
        let i = &r.reservations.items[0].instances.items;
        assert_eq!(i.len(), 2);
        assert_eq!(i[0].instance_id, "i-1");
        assert_eq!(i[0].instance_state.name, "running");
        assert_eq!(i[0].ip_address.as_deref(), Some("54.1.2.3"));
        assert_eq!(i[0].private_ip_address.as_deref(), Some("10.0.0.5"));
        assert_eq!(i[0].instance_lifecycle.as_deref(), Some("spot"));
        assert_eq!(i[0].tag("kpool.dev/instance"), Some("ml/a & b"));
        assert_eq!(i[1].instance_state.name, "pending");
        assert!(i[1].tag_set.items.is_empty());
        assert!(r.reservations.items[1].instances.items.is_empty());
    }

    #[test]
    fn decodes_empty_answers() {
        let r: DescribeInstancesResponse =
            from_xml("DescribeInstances", "<DescribeInstancesResponse><reservationSet/></DescribeInstancesResponse>")
                .unwrap();
        assert!(r.reservations.items.is_empty() && r.next_token.is_none());
        let r: DescribeInstancesResponse = from_xml(
            "DescribeInstances",
            "<DescribeInstancesResponse><requestId>x</requestId></DescribeInstancesResponse>",
        )
        .unwrap();
        assert!(r.reservations.items.is_empty());
    }
}
