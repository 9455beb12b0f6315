//! One module per kind: observe → `core` decides → apply → status (Server-Side Apply).

pub mod backend;
pub mod budget;
pub mod context;
pub mod events;
pub mod fence;
pub mod gc;
pub mod idle_gaps;
pub mod installation;
pub mod instance;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod placement;
pub mod pool;
pub mod pool_cost;
pub mod requests;
pub mod run;
pub mod runtime;

pub use context::{Clock, Context, ManualClock, SiteDefaults, SystemClock};

use std::time::Duration;

use kube::runtime::controller::Action;

use crate::api::reasons::Reason;
use crate::api::resources::SpecError;
use crate::backends::BackendError;
use crate::exec::ExecError;

/// Errors of the reconcilers. Messages say what failed; the source says why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to call the Kubernetes API")]
    Kube(#[from] kube::Error),
    #[error("failed to call backend {backend}")]
    Backend {
        backend: String,
        #[source]
        source: BackendError,
    },
    #[error("failed to control the run's job")]
    Exec(#[from] ExecError),
    #[error("invalid spec")]
    Invalid(#[from] SpecError),
    #[error("machine {0} is still being deleted")]
    StillDeleting(String),
    #[error("backend {0} is not defined in namespace {1}")]
    MissingBackend(String, String),
    #[error("failed to set up the instance's SSH key")]
    InstanceKey(#[from] crate::exec::ssh::instance_key::KeyError),
    #[error("backend {0} is used by {1} instance(s) with machines; deletion waits for them")]
    BackendInUse(String, usize),
    #[error("failed to run the finalizer")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A bounded string for Event reasons and metric labels.
    pub fn category(&self) -> &'static str {
        let reason = match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => Reason::Conflict,
            Error::Kube(_) => Reason::KubeApi,
            Error::Backend { source, .. } => return source.category(),
            Error::Exec(e) => return e.category(),
            Error::Invalid(_) => Reason::InvalidSpec,
            Error::StillDeleting(_) => Reason::StillDeleting,
            Error::MissingBackend(..) => Reason::MissingBackend,
            Error::BackendInUse(..) => Reason::BackendInUse,
            Error::InstanceKey(_) => Reason::InstanceKey,
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    return e.category()
                }
                _ => Reason::Finalizer,
            },
        };
        reason.as_str()
    }

    /// How soon to try again after this error.
    pub fn retry_after(&self) -> Duration {
        match Reason::parse(self.category()) {
            Some(Reason::Conflict) => Duration::from_millis(200),
            Some(Reason::StillDeleting | Reason::BackendInUse) => Duration::from_secs(5),
            Some(Reason::RateLimited) => Duration::from_secs(30),
            _ => Duration::from_secs(15),
        }
    }
}

/// Shared `error_policy`: requeue after a delay that depends on the error.
pub fn error_policy<K>(obj: std::sync::Arc<K>, err: &Error, ctx: std::sync::Arc<Context>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    let kind = K::kind(&()).to_lowercase();
    ctx.metrics.failed(&kind, err.category());
    let meta = obj.meta();
    tracing::warn!(
        error = %chain(err),
        category = err.category(),
        kind,
        namespace = meta.namespace.as_deref().unwrap_or_default(),
        name = meta.name.as_deref().unwrap_or_default(),
        "reconcile failed"
    );
    Action::requeue(err.retry_after())
}

/// An error and all its sources, joined with `: ` (the top level alone, e.g. "failed to
/// run the finalizer", says little).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `true` when the error is an API conflict (409).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// `true` when the error is an API not-found (404).
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
