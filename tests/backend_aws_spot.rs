//! Live spot prices of the `aws` backend against moto (signatures checked), through the
//! fault-injecting proxy: the prices EC2 gives replace the catalog's, they are read once
//! per TTL (an injected clock moves time), and a refresh that fails leaves offers alone.
//!
//! moto 5.2 answers `DescribeSpotPriceHistory` with one entry per availability zone that
//! has the type, every one priced `0.00001`, product `Linux/UNIX (Amazon VPC)`; it
//! ignores `StartTime`, `ProductDescription` and `MaxResults` and never pages. Lower or
//! different prices and a second page come from the proxy.
//!
//! Needs the venv of scripts/peers/moto.sh; without it every test fails and says so.

#[allow(dead_code)] // the controller-level helpers are for other tests
mod support_aws;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kpool::api::offer::Offer;
use kpool::api::resources::ResourcesSpec;
use kpool::backends::aws::{AwsBackend, AwsConfig, DEFAULT_SPOT_PRICE_TTL};
use kpool::backends::Backend;
use kpool::controllers::ManualClock;
use support_aws::proxy::{Fault, Proxy};
use support_aws::{moto, Moto};

/// What moto says every spot instance costs.
const MOTO_PRICE: f64 = 0.00001;
const CATALOG_PRICE: f64 = 0.5;
const ACTION: &str = "DescribeSpotPriceHistory";

struct Env {
    /// The backend's name, which its log lines carry: unique per test.
    name: &'static str,
    moto: &'static Moto,
    proxy: Proxy,
    clock: ManualClock,
}

impl Env {
    async fn new(name: &'static str) -> Env {
        logs();
        let moto = moto();
        let clock = ManualClock::new("2026-11-29T08:00:00Z".parse().unwrap());
        Env { name, moto, proxy: Proxy::start(&moto.endpoint).await, clock }
    }

    fn config(&self) -> AwsConfig {
        self.moto.config(&self.proxy.endpoint)
    }

    fn backend_with(&self, config: AwsConfig) -> AwsBackend {
        AwsBackend::new(self.name, config, catalog()).expect("backend").with_clock(Arc::new(self.clock.clone()))
    }

    fn backend(&self) -> AwsBackend {
        self.backend_with(self.config())
    }

    fn calls(&self) -> usize {
        self.proxy.seen(ACTION).len()
    }

    /// The warnings logged by this test's backends so far.
    fn warnings(&self) -> Vec<String> {
        let backend = format!("backend={} ", self.name);
        let logs = logs().lock().unwrap();
        String::from_utf8_lossy(&logs)
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(&backend))
            .map(str::to_string)
            .collect()
    }
}

/// On-demand and spot offers of one type in us-east-1, two spot types in us-west-2 (one
/// twice, as gpuhunt lists a type once per disk or flag variant), a spot type EC2 has no
/// price for, and a region outside the backend's.
fn catalog() -> Vec<Offer> {
    vec![
        offer("us-east-1", "t3.micro", false),
        offer("us-west-2", "g5.xlarge", true),
        offer("us-west-2", "g5.xlarge", true),
        offer("us-west-2", "g5.xlarge", false),
        offer("us-west-2", "t3.micro", true),
        offer("us-west-2", "kp1.imaginary", true),
        offer("eu-west-1", "g5.xlarge", true),
    ]
}

fn offer(region: &str, instance_type: &str, spot: bool) -> Offer {
    support_aws::offer(region, instance_type, spot, CATALOG_PRICE)
}

async fn offers(backend: &AwsBackend) -> Vec<Offer> {
    let req = ResourcesSpec::default().resolve().unwrap();
    backend.offers(&req).await.expect("offers never fail for pricing")
}

/// The price of the offer of `instance_type` in `region` with that `spot`-ness.
fn price(offers: &[Offer], region: &str, instance_type: &str, spot: bool) -> f64 {
    let found: Vec<f64> = offers
        .iter()
        .filter(|o| o.region == region && o.instance_type == instance_type && o.spot == spot)
        .map(|o| o.price)
        .collect();
    assert!(!found.is_empty(), "no offer {region} {instance_type} spot={spot} in {offers:?}");
    assert!(found.windows(2).all(|w| w[0] == w[1]), "variants agree: {found:?}");
    found[0]
}

#[tokio::test]
async fn spot_offers_take_ec2s_current_price_and_on_demand_ones_keep_the_catalogs() {
    let env = Env::new("aws-prices").await;
    let offers = offers(&env.backend()).await;
    assert_eq!(offers.len(), 6, "eu-west-1 is not one of the backend's regions");
    assert_eq!(price(&offers, "us-west-2", "g5.xlarge", true), MOTO_PRICE);
    assert_eq!(price(&offers, "us-west-2", "t3.micro", true), MOTO_PRICE);
    assert_eq!(price(&offers, "us-west-2", "kp1.imaginary", true), CATALOG_PRICE, "EC2 has no price for it");
    assert_eq!(price(&offers, "us-west-2", "g5.xlarge", false), CATALOG_PRICE);
    assert_eq!(price(&offers, "us-east-1", "t3.micro", false), CATALOG_PRICE);

    // One call, for the one region with spot offers, naming each spot type once.
    let calls = env.proxy.seen(ACTION);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert!(call.raw.contains("/us-west-2/ec2/aws4_request"), "signed for us-west-2");
    assert_eq!(call.status, 200, "moto accepted the signed call: {}", call.response);
    let types: Vec<&str> =
        call.params.iter().filter(|(k, _)| k.starts_with("InstanceType.")).map(|(_, v)| v.as_str()).collect();
    assert_eq!(types, ["g5.xlarge", "kp1.imaginary", "t3.micro"]);
    let param = |k: &str| call.params.get(k).map(String::as_str);
    assert_eq!(param("ProductDescription.1"), Some("Linux/UNIX"));
    assert_eq!(param("StartTime"), Some("2026-11-29T08:00:00Z"), "now, by the backend's clock");
    assert_eq!(param("MaxResults"), Some("1000"));
    assert_eq!(param("Version"), Some("2016-11-15"));
    assert!(!call.params.contains_key("NextToken"));
}

#[tokio::test]
async fn prices_are_read_once_per_ttl() {
    let env = Env::new("aws-ttl").await;
    let backend = env.backend();
    offers(&backend).await;
    offers(&backend).await;
    assert_eq!(env.calls(), 1, "the second call within the TTL uses the cache");
    env.clock.advance(DEFAULT_SPOT_PRICE_TTL - Duration::from_secs(1));
    offers(&backend).await;
    assert_eq!(env.calls(), 1, "a second before the TTL is up");
    env.clock.advance(Duration::from_secs(1));
    offers(&backend).await;
    assert_eq!(env.calls(), 2, "due again once the TTL is up");
    offers(&backend).await;
    assert_eq!(env.calls(), 2);

    // The TTL of the config.
    let short = env.backend_with(AwsConfig { spot_price_ttl: Some(Duration::from_secs(60)), ..env.config() });
    offers(&short).await;
    env.clock.advance(Duration::from_secs(59));
    offers(&short).await;
    assert_eq!(env.calls(), 3);
    env.clock.advance(Duration::from_secs(1));
    offers(&short).await;
    assert_eq!(env.calls(), 4);
}

/// A first page with its own prices for g5.xlarge and a token; the second page is moto's.
fn first_page() -> Fault {
    let item = |zone: &str, price: &str| {
        format!(
            "<item><instanceType>g5.xlarge</instanceType><productDescription>Linux/UNIX</productDescription>\
             <spotPrice>{price}</spotPrice><timestamp>2026-11-29T07:59:00.000Z</timestamp>\
             <availabilityZone>{zone}</availabilityZone></item>"
        )
    };
    let body = format!(
        "<DescribeSpotPriceHistoryResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId>\
         <spotPriceHistorySet>{}{}</spotPriceHistorySet><nextToken>page-2</nextToken></DescribeSpotPriceHistoryResponse>",
        item("us-west-2x", "0.000007"),
        item("us-west-2y", "0.000003"),
    );
    Fault::Respond { status: 200, body }
}

#[tokio::test]
async fn every_page_is_read_and_the_lowest_zone_wins() {
    let env = Env::new("aws-pages").await;
    env.proxy.fail_next(ACTION, 1, first_page());
    let offers = offers(&env.backend().with_page_size(5)).await;
    // us-west-2y's price is below moto's in every zone of page two; t3.micro is on page two only.
    assert_eq!(price(&offers, "us-west-2", "g5.xlarge", true), 0.000003);
    assert_eq!(price(&offers, "us-west-2", "t3.micro", true), MOTO_PRICE);
    let calls = env.proxy.seen(ACTION);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].params.get("NextToken").map(String::as_str), Some("page-2"));
    assert!(calls.iter().all(|c| c.params.get("MaxResults").map(String::as_str) == Some("5")));
    assert_eq!(calls[0].params.get("InstanceType.1"), calls[1].params.get("InstanceType.1"), "same question");
}

/// Everything logged at WARN or above by this test binary. One global subscriber: a
/// subscriber per test thread would race with tracing's per-callsite interest cache.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        buffer
    })
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_previous_prices_and_is_tried_again_after_the_ttl() {
    let env = Env::new("aws-throttled").await;
    let backend = env.backend();
    assert_eq!(price(&offers(&backend).await, "us-west-2", "g5.xlarge", true), MOTO_PRICE);

    // Throttled: the refreshed prices stay, not the catalog's.
    env.clock.advance(DEFAULT_SPOT_PRICE_TTL);
    let throttled = Fault::Error { status: 503, code: "RequestLimitExceeded", message: "Request limit exceeded." };
    env.proxy.fail_next(ACTION, 1, throttled);
    let after = offers(&backend).await;
    assert_eq!(env.calls(), 2);
    assert_eq!(env.proxy.seen(ACTION)[1].status, 503, "the fault was served");
    assert_eq!(price(&after, "us-west-2", "g5.xlarge", true), MOTO_PRICE);
    assert_eq!(price(&after, "us-west-2", "g5.xlarge", false), CATALOG_PRICE);
    let warned = env.warnings();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("RequestLimitExceeded") && warned[0].contains("us-west-2"), "{warned:?}");

    // Not asked again before the TTL, and no second warning for the same failure.
    offers(&backend).await;
    assert_eq!(env.calls(), 2);
    assert_eq!(env.warnings().len(), 1);

    // A TTL later it works again.
    env.proxy.fail_next(ACTION, 1, first_page());
    env.clock.advance(DEFAULT_SPOT_PRICE_TTL);
    assert_eq!(price(&offers(&backend).await, "us-west-2", "g5.xlarge", true), 0.000003);
    assert_eq!(env.warnings().len(), 1);
}

#[tokio::test]
async fn without_the_permission_offers_keep_the_catalog_prices_and_no_secret_is_logged() {
    let env = Env::new("aws-denied").await;
    let denied = Fault::Error {
        status: 403,
        code: "UnauthorizedOperation",
        message: "You are not authorized to perform this operation.",
    };
    env.proxy.fail_next(ACTION, 1, denied);
    let backend = env.backend();
    let offers = offers(&backend).await;
    assert_eq!(offers.len(), 6);
    assert!(offers.iter().all(|o| o.price == CATALOG_PRICE), "{offers:?}");
    let warned = env.warnings();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("UnauthorizedOperation"), "{warned:?}");
    let everything = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(!everything.contains(&env.moto.secret_access_key), "{everything}");
    assert!(!format!("{backend:?}").contains(&env.moto.secret_access_key));
    for seen in env.proxy.seen("") {
        assert!(!seen.raw.contains(&env.moto.secret_access_key));
    }
}

#[tokio::test]
async fn an_unreachable_ec2_does_not_fail_offers() {
    let env = Env::new("aws-unreachable").await;
    let config = AwsConfig { endpoint: Some("http://127.0.0.1:9".into()), ..env.config() };
    let started = std::time::Instant::now();
    let offers = offers(&env.backend_with(config)).await;
    assert!(offers.iter().all(|o| o.price == CATALOG_PRICE));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}
