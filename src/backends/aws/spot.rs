//! Live spot prices: what `DescribeSpotPriceHistory` says a spot instance costs now.
//!
//! Catalog spot prices go stale within hours, so the backend asks EC2 for the current
//! ones, per region, for the instance types the catalog offers as spot there. It asks
//! with `StartTime` = now and `ProductDescription` `Linux/UNIX`, so EC2 answers with the
//! price in effect in each availability zone; an offer does not fix the zone (the
//! default subnet does), so it takes the lowest of them ([`lowest_current`]).
//!
//! [`SpotPrices`] keeps the answer per region for a TTL. A region is claimed before it
//! is asked: callers that come while a refresh is running use the prices they have, so
//! a region is asked at most once per TTL whatever the answer. A failed refresh leaves
//! the prices as they were (the catalog's, or the last refresh's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::client::{from_xml, CallError, Ec2Client, Params};
use super::model::{DescribeSpotPriceHistoryResponse, SpotPrice};
use crate::api::offer::Offer;
use crate::clock::{Clock, SystemClock};

/// How long refreshed spot prices are used before EC2 is asked again, unless set with
/// `AwsConfig::spot_price_ttl`.
pub const DEFAULT_SPOT_PRICE_TTL: Duration = Duration::from_secs(600);
/// The operating system the prices are for (kpool launches Linux AMIs).
const PRODUCT: &str = "Linux/UNIX";

/// The current price of each instance type in `entries`: per availability zone the
/// newest entry, then the lowest across zones. Entries whose price is not a positive
/// number are left out; a type with none has no price.
pub fn lowest_current(entries: &[SpotPrice]) -> HashMap<String, f64> {
    let mut newest: HashMap<(&str, &str), (Option<Timestamp>, f64)> = HashMap::new();
    for e in entries {
        let Some(price) = e.spot_price.trim().parse::<f64>().ok().filter(|p| p.is_finite() && *p > 0.0) else {
            continue;
        };
        let at = e.timestamp.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
        let slot = newest.entry((&e.instance_type, &e.availability_zone)).or_insert((at, price));
        if at > slot.0 {
            *slot = (at, price);
        }
    }
    let mut lowest: HashMap<String, f64> = HashMap::new();
    for ((instance_type, _), (_, price)) in newest {
        lowest.entry(instance_type.to_string()).and_modify(|l| *l = l.min(price)).or_insert(price);
    }
    lowest
}

/// The current spot prices of `types` in `region` ([`lowest_current`] of every page).
pub async fn fetch(
    client: &Ec2Client,
    region: &str,
    types: &[String],
    now: Timestamp,
    page_size: u32,
) -> Result<HashMap<String, f64>, CallError> {
    let mut params = Params::new();
    for (i, t) in types.iter().enumerate() {
        params.set(format!("InstanceType.{}", i + 1), t.as_str());
    }
    params.set("ProductDescription.1", PRODUCT).set("StartTime", now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let mut entries = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut page = params.clone();
        page.set("MaxResults", page_size.to_string());
        if let Some(t) = &token {
            page.set("NextToken", t.clone());
        }
        let body = client.call(region, "DescribeSpotPriceHistory", &page).await?;
        let answer: DescribeSpotPriceHistoryResponse = from_xml("DescribeSpotPriceHistory", &body)?;
        entries.extend(answer.prices.items);
        match answer.next_token.filter(|t| !t.is_empty()) {
            Some(t) if Some(&t) != token.as_ref() => token = Some(t),
            _ => return Ok(lowest_current(&entries)),
        }
    }
}

#[derive(Default)]
struct RegionPrices {
    /// When a refresh was last started.
    asked_at: Option<Timestamp>,
    /// Prices by instance type from the last refresh that worked.
    prices: HashMap<String, f64>,
}

/// The spot prices of one backend, by region. See the module docs.
pub struct SpotPrices {
    ttl: Duration,
    clock: Arc<dyn Clock>,
    /// The instance types offered as spot, by region.
    types: BTreeMap<String, Vec<String>>,
    regions: Mutex<HashMap<String, RegionPrices>>,
}

impl fmt::Debug for SpotPrices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpotPrices").field("ttl", &self.ttl).field("types", &self.types).finish_non_exhaustive()
    }
}

impl SpotPrices {
    /// Prices for the spot offers among `offers`, kept for `ttl`.
    pub fn new(offers: &[Offer], ttl: Duration) -> Self {
        let mut types: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for o in offers.iter().filter(|o| o.spot && !o.instance_type.is_empty()) {
            types.entry(o.region.clone()).or_default().insert(o.instance_type.clone());
        }
        SpotPrices {
            ttl,
            clock: Arc::new(SystemClock),
            types: types.into_iter().map(|(r, t)| (r, t.into_iter().collect())).collect(),
            regions: Mutex::default(),
        }
    }

    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The regions (and their spot types) whose prices are due at `now`: never asked, or
    /// last asked a TTL ago or more. They count as asked from now on.
    pub fn claim_due(&self, now: Timestamp) -> Vec<(String, Vec<String>)> {
        let mut regions = self.regions.lock().expect("spot prices");
        let mut due = Vec::new();
        for (region, types) in &self.types {
            let entry = regions.entry(region.clone()).or_default();
            if entry.asked_at.is_none_or(|at| now >= crate::core::add(at, self.ttl)) {
                entry.asked_at = Some(now);
                due.push((region.clone(), types.clone()));
            }
        }
        due
    }

    /// Keeps `prices`, a refresh's answer, as the prices of `region`.
    pub fn store(&self, region: &str, prices: HashMap<String, f64>) {
        self.regions.lock().expect("spot prices").entry(region.to_string()).or_default().prices = prices;
    }

    /// Gives each spot offer among `offers` the price last refreshed for it, if any.
    pub fn apply(&self, offers: &mut [Offer]) {
        let regions = self.regions.lock().expect("spot prices");
        for o in offers.iter_mut().filter(|o| o.spot) {
            if let Some(price) = regions.get(&o.region).and_then(|r| r.prices.get(&o.instance_type)) {
                o.price = *price;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    // An AWS answer (shape of the API reference's example), two zones for one type.
    const ANSWER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeSpotPriceHistoryResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>59dbff89-35bd-4eac-99ed-be587EXAMPLE</requestId>
  <spotPriceHistorySet>
    <item>
      <instanceType>g5.xlarge</instanceType>
      <productDescription>Linux/UNIX</productDescription>
      <spotPrice>0.452100</spotPrice>
      <timestamp>2026-11-29T06:55:13.000Z</timestamp>
      <availabilityZone>us-east-1a</availabilityZone>
    </item>
    <item>
      <instanceType>g5.xlarge</instanceType>
      <productDescription>Linux/UNIX</productDescription>
      <spotPrice>0.398000</spotPrice>
      <timestamp>2026-11-29T05:01:40.000Z</timestamp>
      <availabilityZone>us-east-1c</availabilityZone>
    </item>
  </spotPriceHistorySet>
  <nextToken>page-2</nextToken>
</DescribeSpotPriceHistoryResponse>"#;

    fn entry(instance_type: &str, zone: &str, price: &str, at: &str) -> SpotPrice {
        SpotPrice {
            instance_type: instance_type.into(),
            availability_zone: zone.into(),
            spot_price: price.into(),
            timestamp: Some(at.into()),
        }
    }

    fn offer(region: &str, instance_type: &str, spot: bool, price: f64) -> Offer {
        Offer { region: region.into(), instance_type: instance_type.into(), spot, price, ..Offer::default() }
    }

    #[test]
    fn decodes_an_answer_page() {
        let r: DescribeSpotPriceHistoryResponse = from_xml("DescribeSpotPriceHistory", ANSWER).unwrap();
        assert_eq!(r.next_token.as_deref(), Some("page-2"));
        assert_eq!(r.prices.items.len(), 2);
        assert_eq!(r.prices.items[1], entry("g5.xlarge", "us-east-1c", "0.398000", "2026-11-29T05:01:40.000Z"));
        assert_eq!(lowest_current(&r.prices.items), HashMap::from([("g5.xlarge".to_string(), 0.398)]));

        let empty: DescribeSpotPriceHistoryResponse = from_xml(
            "DescribeSpotPriceHistory",
            "<DescribeSpotPriceHistoryResponse><spotPriceHistorySet/><nextToken/></DescribeSpotPriceHistoryResponse>",
        )
        .unwrap();
        assert!(empty.prices.items.is_empty());
        assert_eq!(empty.next_token.filter(|t| !t.is_empty()), None);
    }

    #[test]
    fn the_price_is_the_lowest_across_zones_of_each_zones_newest_price() {
        let entries = [
            // us-east-1a went from 0.30 to 0.50: 0.50 is its price now.
            entry("p4d.24xlarge", "us-east-1a", "0.300000", "2026-11-29T01:00:00.000Z"),
            entry("p4d.24xlarge", "us-east-1a", "0.500000", "2026-11-29T02:00:00.000Z"),
            entry("p4d.24xlarge", "us-east-1b", "0.450000", "2026-11-28T23:00:00.000Z"),
            entry("p4d.24xlarge", "us-east-1c", "0.700000", "2026-11-29T03:00:00.000Z"),
            entry("g5.xlarge", "us-east-1a", "0.400000", "2026-11-29T03:00:00.000Z"),
            // Prices that are not prices are left out.
            entry("g5.xlarge", "us-east-1b", "free", "2026-11-29T03:00:00.000Z"),
            entry("g5.xlarge", "us-east-1c", "0", "2026-11-29T03:00:00.000Z"),
            entry("t3.micro", "us-east-1a", "-1", "2026-11-29T03:00:00.000Z"),
        ];
        let got = lowest_current(&entries);
        assert_eq!(got, HashMap::from([("p4d.24xlarge".to_string(), 0.45), ("g5.xlarge".to_string(), 0.4)]));
        // Order does not matter: the newer entry of a zone wins wherever it comes.
        let mut reversed = entries.to_vec();
        reversed.reverse();
        assert_eq!(lowest_current(&reversed), got);
    }

    #[test]
    fn regions_are_due_once_per_ttl_and_only_with_spot_offers() {
        let offers = [
            offer("us-east-1", "g5.xlarge", true, 1.0),
            offer("us-east-1", "g5.xlarge", true, 1.0),
            offer("us-east-1", "p5.48xlarge", true, 1.0),
            offer("us-east-1", "t3.micro", false, 1.0),
            offer("eu-west-1", "t3.micro", false, 1.0),
        ];
        let t0: Timestamp = "2026-11-29T00:00:00Z".parse().unwrap();
        let spot = SpotPrices::new(&offers, Duration::from_secs(600));
        let due = spot.claim_due(t0);
        assert_eq!(due, vec![("us-east-1".to_string(), vec!["g5.xlarge".to_string(), "p5.48xlarge".to_string()])]);
        assert!(spot.claim_due(t0).is_empty(), "claimed");
        assert!(spot.claim_due(crate::core::add(t0, Duration::from_secs(599))).is_empty());
        assert_eq!(spot.claim_due(crate::core::add(t0, Duration::from_secs(600))).len(), 1);
    }

    #[test]
    fn refreshed_prices_apply_to_spot_offers_only_and_missing_ones_keep_the_catalogs() {
        let mut spot = SpotPrices::new(&[], DEFAULT_SPOT_PRICE_TTL);
        let clock = ManualClock::new("2026-11-29T00:00:00Z".parse().unwrap());
        spot.set_clock(Arc::new(clock.clone()));
        assert_eq!(spot.now(), clock.now());
        spot.store("us-east-1", HashMap::from([("g5.xlarge".to_string(), 0.25)]));
        let mut offers = vec![
            offer("us-east-1", "g5.xlarge", true, 1.0),
            offer("us-east-1", "g5.xlarge", false, 1.0),
            offer("us-east-1", "p5.48xlarge", true, 9.0),
            offer("us-west-2", "g5.xlarge", true, 1.5),
        ];
        spot.apply(&mut offers);
        let prices: Vec<f64> = offers.iter().map(|o| o.price).collect();
        assert_eq!(prices, [0.25, 1.0, 9.0, 1.5]);
    }
}
