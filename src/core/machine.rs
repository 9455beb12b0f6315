//! Machines as a provider reports them, and the kinds of error a provider answers with:
//! the vocabulary the pure decisions in `core` share with the backends that talk to
//! providers (`crate::backends` re-exports them).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::reasons::Reason;

/// Errors a backend reports, by what the caller should do about them.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The machine (or the resource asked for) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The provider has no capacity for this offer right now; try the next offer.
    #[error("insufficient capacity: {0}")]
    InsufficientCapacity(String),
    /// The provider throttled us; retry after the delay.
    #[error("rate limited: {message}")]
    RateLimited { message: String, retry_after: Option<Duration> },
    /// The backend's configuration (credentials, regions, endpoint) is wrong.
    #[error("invalid backend configuration: {0}")]
    InvalidConfig(String),
    /// No answer, or the provider failed while answering (a timeout, a dropped connection,
    /// a 5xx, an unreadable reply): whether the request took effect is unknown. After a
    /// `create`, the machine may exist: it is looked up before anything else is launched.
    #[error("no answer: {0}")]
    Unanswered(String),
    /// The provider answered with an error that fits none of the above: the request was
    /// refused. Retried with backoff.
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    /// A bounded string for Event reasons, status and metric labels.
    pub fn category(&self) -> &'static str {
        self.reason().as_str()
    }

    /// [`category`](Self::category) as a reason.
    pub fn reason(&self) -> Reason {
        match self {
            BackendError::NotFound(_) => Reason::NotFound,
            BackendError::InsufficientCapacity(_) => Reason::InsufficientCapacity,
            BackendError::RateLimited { .. } => Reason::RateLimited,
            BackendError::InvalidConfig(_) => Reason::InvalidConfig,
            BackendError::Unanswered(_) => Reason::Unanswered,
            BackendError::Other(_) => Reason::Other,
        }
    }

    /// Whether a `create` that failed so may still have launched its machine: only when
    /// no usable answer came back. Every other error is the provider's refusal.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, BackendError::Unanswered(_))
    }
}

/// The provider's view of a machine's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineState {
    /// Launched, not ready yet.
    Pending,
    /// Up and reachable.
    Running,
    /// Being shut down or deleted.
    Stopping,
    /// Gone (terminated, deleted or reclaimed).
    Terminated,
}

/// A machine as the provider reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    /// The UID-derived machine name.
    pub name: String,
    /// The provider's id (e.g. `i-0abc…`, a Pod name).
    pub provider_id: String,
    pub state: MachineState,
    /// Address where the machine can be reached, once known.
    pub address: Option<String>,
    /// The tags the machine carries.
    pub tags: BTreeMap<String, String>,
}
