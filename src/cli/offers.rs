//! `kubectl pool offers`: the ranked offers for a requirement, from the namespace's
//! backends or, offline, from a directory of gpuhunt catalogs.

use std::path::Path;

use kube::api::Api;
use kube::{Client, ResourceExt};

use super::output::{offers_json, offers_table};
use super::{CliError, Format, OffersArgs, Term};
use crate::api::backend::Backend as BackendObject;
use crate::api::offer::Offer;
use crate::api::resources::Requirements;
use crate::backends::catalog::read_offers;
use crate::backends::factory::DefaultFactory;
use crate::backends::BackendFactory;
use crate::core::offers::{rank_offers, TopOffers};
use crate::core::policy::EffectivePolicy;

/// Offers shown in a table when `--max-offers` is not given: a screenful.
pub const TABLE_OFFERS: usize = 20;

/// The best `limit` offers for `req` and `policy` (as [`rank_offers`] ranks them) among
/// the gpuhunt CSV files in `dir`; each offer's backend is the provider that names its
/// file (`aws.csv` → `aws`). Every row of every file is read and checked, but only the
/// offers among the best so far are kept: a large catalog is not held in memory.
pub fn catalog_offers(
    dir: &Path,
    req: &Requirements,
    policy: &EffectivePolicy,
    limit: usize,
) -> Result<Vec<Offer>, CliError> {
    let failed = |e: &dyn std::fmt::Display| CliError::Failed(format!("--catalog {}: {e}", dir.display()));
    let mut top = TopOffers::new(req, policy, limit);
    let mut files = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| failed(&e))? {
        let path = entry.map_err(|e| failed(&e))?.path();
        let (Some(stem), Some("csv")) =
            (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|e| e.to_str()))
        else {
            continue;
        };
        let file = std::fs::File::open(&path).map_err(|e| failed(&e))?;
        read_offers(&format!("{stem}.csv"), stem, file, |o| top.push(o, Offer::clone)).map_err(|e| failed(&e))?;
        files += 1;
    }
    if files == 0 {
        return Err(failed(&"no *.csv catalog files in it"));
    }
    Ok(top.into_sorted())
}

/// Every offer of the namespace's backends that may fit `req`, with one warning per
/// backend that could not be asked.
pub async fn cluster_offers(
    client: &Client,
    namespace: &str,
    req: &Requirements,
) -> Result<(Vec<Offer>, Vec<String>), CliError> {
    let objects = Api::<BackendObject>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    if objects.is_empty() {
        return Err(CliError::Failed(format!(
            "namespace {namespace} has no Backend: create one (see deploy/examples/backend-kubernetes.yaml)"
        )));
    }
    let factory = DefaultFactory::new(client.clone());
    let mut offers = Vec::new();
    let mut warnings = Vec::new();
    for obj in objects {
        let built = match factory.build(&obj).await {
            Ok(b) => b,
            Err(e) => {
                warnings.push(format!("backend {}: {e}", obj.name_any()));
                continue;
            }
        };
        match built.offers(req).await {
            Ok(o) => offers.extend(o),
            Err(e) => warnings.push(format!("backend {}: {e}", obj.name_any())),
        }
    }
    Ok((offers, warnings))
}

/// The offers command. `client` is `None` only with `--catalog`.
pub async fn run(
    args: &OffersArgs,
    client: Option<&Client>,
    namespace: &str,
    term: &mut Term<'_>,
) -> Result<(), CliError> {
    let req = args.resources.resolve()?;
    let policy: EffectivePolicy = args.policy.effective(&[])?;
    let limit = args.max_offers.unwrap_or(match args.output {
        Format::Table => TABLE_OFFERS,
        Format::Json => usize::MAX,
    });
    let (ranked, warnings) = match (&args.catalog, client) {
        (Some(dir), _) => (catalog_offers(dir, &req, &policy, limit)?, Vec::new()),
        (None, Some(c)) => {
            let (all, warnings) = cluster_offers(c, namespace, &req).await?;
            (rank_offers(&all, &req, &policy, limit), warnings)
        }
        (None, None) => return Err(CliError::Usage("no cluster: pass --catalog DIR to read offers offline".into())),
    };
    match args.output {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *term.out, &offers_json(&req, &policy, &ranked))
                .map_err(|e| CliError::Failed(e.to_string()))?;
            writeln!(term.out)?;
        }
        Format::Table => {
            writeln!(term.out, "Requirements: {}", req.render())?;
            for w in &warnings {
                writeln!(term.out, "warning: {w}")?;
            }
            if ranked.is_empty() {
                writeln!(
                    term.out,
                    "No offers fit: loosen the requirements or the policy (e.g. --max-price, --spot-auto)."
                )?;
            } else {
                write!(term.out, "{}", offers_table(&ranked))?;
            }
        }
    }
    Ok(())
}
