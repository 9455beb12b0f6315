//! Every reason kpool writes: in conditions (`reason`), in Events (`reason`) and in a
//! run's history and `terminationReason`.
//!
//! A reason is part of the API: users, `kubectl get` columns, alerts and tests read the
//! strings. Each one is declared once here, so two controllers cannot spell one reason in
//! two ways, and a controller reading another's reason back ([`Reason::parse`]) matches on
//! a variant, not on a string. The wire string of a variant is its name (`Reason::Idle`
//! is `"Idle"`), by construction.
//!
//! Error categories that are not kpool's own decisions (a backend's or an executor's error
//! kind, e.g. `InsufficientCapacity`, `CatalogEmpty`) are listed where they have a meaning
//! to a controller; the others pass through as the error's `category()`.

use std::fmt;

macro_rules! reasons {
    ($( $(#[doc = $doc:literal])+ $name:ident, )+) => {
        /// A condition, Event or run-history reason kpool writes (see the module docs).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $( $(#[doc = $doc])+ $name, )+
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)+];

            /// The reason as written on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Reason::$name => stringify!($name), )+
                }
            }
        }
    };
}

reasons! {
    // --- Where an Instance stands (its `Ready` condition) ---
    /// Waiting for an offer to launch.
    Pending,
    /// A machine is being launched (Instance), or an instance is provisioned for the run (Run).
    Provisioning,
    /// Up and free for runs.
    Idle,
    /// Up and running a run.
    Busy,
    /// Being deleted: its machine is being deleted.
    Terminating,
    /// Its machine is deleted.
    Terminated,
    /// The spec cannot be used as written; the message names the field.
    InvalidSpec,
    /// Idle longer than its idle duration; terminated.
    IdleTimeout,
    /// The job of a run that no longer holds the instance is being stopped on it.
    Fencing,
    /// The machine does not answer (Instance); or it answers again but was given up.
    Unreachable,
    /// The provider reclaimed the spot machine.
    Reclaimed,
    /// The provider no longer has the (on-demand) machine.
    MachineGone,
    /// The pool's spending limit was reached.
    BudgetExceeded,
    /// The pool holds `maxInstances` instances already.
    PoolAtCapacity,
    /// No offer had capacity; launching is retried.
    WaitingForCapacity,
    /// A launch got no answer; the machine is looked up before anything else is launched.
    ResolvingLaunch,
    /// More idle instances than the pool's warm minimum needs.
    WarmSurplus,
    /// The run it was provisioned for no longer needs it.
    NotNeeded,

    // --- Instance sub-conditions and Events ---
    /// `LaunchResolved` False: the unanswered launch is being looked up.
    Resolving,
    /// `LaunchResolved` True: the unanswered launch did create the machine.
    MachineFound,
    /// `LaunchResolved` True: the unanswered launch created no machine.
    NoMachine,
    /// `Reachable` True (Instance) or `InstanceReachable` True (Run): it answers again.
    Reachable,
    /// `Teardown`: the machine is deleted (also the Event when the Instance goes).
    Deleted,
    /// `Teardown` False: deleting the machine failed; retried.
    DeleteFailed,
    /// `JobFenced`: the machine was deleted, so the job is gone with it.
    MachineDeleted,
    /// `JobFenced` Unknown: stopping the job was given up.
    Abandoned,
    /// `JobFenced` False: the job could not be stopped yet.
    FencePending,
    /// `JobFenced` True: the job is stopped.
    Fenced,
    /// Event: the job was fenced off by deleting the machine.
    FenceByDeletion,
    /// Event: fencing the job was given up.
    FenceAbandoned,
    /// Event: a machine was launched.
    Launched,
    /// Event: a launch got no answer.
    LaunchUnanswered,
    /// Event: the spot offers failed; an on-demand offer is tried (`spotPolicy: auto`).
    SpotFallback,
    /// Event: the machine is up (Instance); the pool is ready (Pool `Ready`, `Warm`).
    Ready,
    /// Event: the run let go of the instance.
    Released,

    // --- Runs ---
    /// `Scheduled` True: the run is on an instance.
    Assigned,
    /// Another attempt starts.
    Retrying,
    /// No capacity within the retry window.
    NoCapacity,
    /// No offer fits the requirements and policies.
    NoOffers,
    /// Stopped by the user (`spec.stop`).
    Stopped,
    /// The executor cannot run this job (e.g. its image cannot be pulled).
    Unsupported,
    /// `JobControl` True: the executor controls the job again.
    Controlled,
    /// The run's instance does not answer.
    InstanceUnreachable,
    /// The run's instance went away while the run was on it.
    Interrupted,
    /// The run ran longer than its `maxDuration`.
    MaxDurationExceeded,
    /// The job exited with code 0 (Event; `Succeeded` condition).
    Succeeded,
    /// The job exited with another code (Event).
    Failed,
    /// The instance's Backend is not defined in the namespace.
    MissingBackend,
    /// The job could not be started.
    StartFailed,
    /// The executor failed while following the job.
    ExecutorError,
    /// The job could not be stopped.
    StopFailed,
    /// The job exited with code 0 (history, `terminationReason`).
    Completed,
    /// The job exited with another code (history, `terminationReason`).
    ContainerExitedWithError,
    /// The run's pinned instance is not idle in its pool or does not fit.
    InstanceNotAvailable,
    /// No idle instance fits and `creationPolicy: Reuse` never provisions.
    NoIdleInstance,

    // --- Pools and Backends ---
    /// Pool `Ready`: its status is up to date.
    Reconciled,
    /// Pool `AtCapacity` True.
    MaxInstancesReached,
    /// Pool `AtCapacity` False.
    HasRoom,
    /// Pool `Warm`: a warm window cannot be read.
    InvalidWindow,
    /// Pool `Warm` False: warm instances are starting.
    Starting,
    /// Pool `Warm` False: `maxInstances` leaves no room for the warm minimum.
    NoRoom,
    /// Pool `Warm` False: a warm instance failed to launch (no offer fits, or every
    /// launch was refused); the next one is launched after a back-off.
    WarmLaunchFailed,
    /// Backend `Ready` True: its configuration, credentials and catalog could be read.
    Configured,
    /// Backend `InUse` True: instances with machines still use it.
    InstancesLeft,

    // --- Garbage collection ---
    /// Event: a machine carries kpool's marker but no installation identity.
    UnattributedMachine,
    /// Event: a machine no Instance owns.
    OrphanedMachine,
    /// Event: a machine no Instance owns was deleted.
    OrphanDeleted,

    // --- Error categories (Events, metric labels) ---
    /// The API server refused a write on a stale resourceVersion.
    Conflict,
    /// Another API server error.
    KubeApi,
    /// A machine is still being deleted.
    StillDeleting,
    /// A Backend's deletion waits for its instances.
    BackendInUse,
    /// The instance's SSH key could not be set up.
    InstanceKey,
    /// The finalizer could not be run.
    Finalizer,
    /// Backend error: the machine does not exist.
    NotFound,
    /// Backend error: no capacity for the offer.
    InsufficientCapacity,
    /// Backend error: the provider throttled kpool.
    RateLimited,
    /// Backend error: the backend's configuration is wrong.
    InvalidConfig,
    /// Backend error: no answer; whether the request took effect is unknown.
    Unanswered,
    /// Backend or executor error that fits no other kind.
    Other,
}

impl Reason {
    /// The reason written as `s`, if kpool writes it.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl Reason {
    /// Whether an instance's `Ready` reason says kpool gave the instance up while it was
    /// live (the provider took the machine back, it stopped answering, or its pool's
    /// budget ran out): a run that was on it was interrupted, not ended by its job.
    pub const fn instance_lost(self) -> bool {
        matches!(self, Reason::Reclaimed | Reason::MachineGone | Reason::Unreachable | Reason::BudgetExceeded)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for Reason {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<Reason> for str {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Reason> for String {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_parses_back_and_is_spelled_once() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
            assert!(seen.insert(r.as_str()), "{r} twice");
            assert!(r.as_str().chars().all(|c| c.is_ascii_alphanumeric()), "{r}");
        }
        assert_eq!(Reason::parse("NoSuchReason"), None);
        assert_eq!(Reason::parse("idle"), None, "reasons are case-sensitive");
    }

    #[test]
    fn lost_instance_reasons_are_the_health_check_and_budget_verdicts() {
        let lost: Vec<&str> = Reason::ALL.iter().filter(|r| r.instance_lost()).map(|r| r.as_str()).collect();
        assert_eq!(lost, ["Unreachable", "Reclaimed", "MachineGone", "BudgetExceeded"]);
    }

    #[test]
    fn wire_strings_stay_as_documented() {
        // The README, the CRDs' docs and users' alerts name these.
        for (r, s) in [
            (Reason::Idle, "Idle"),
            (Reason::IdleTimeout, "IdleTimeout"),
            (Reason::NoCapacity, "NoCapacity"),
            (Reason::Interrupted, "Interrupted"),
            (Reason::InstanceUnreachable, "InstanceUnreachable"),
            (Reason::ContainerExitedWithError, "ContainerExitedWithError"),
            (Reason::PoolAtCapacity, "PoolAtCapacity"),
            (Reason::MachineGone, "MachineGone"),
            (Reason::Reclaimed, "Reclaimed"),
            (Reason::BudgetExceeded, "BudgetExceeded"),
        ] {
            assert_eq!(r.as_str(), s);
            assert_eq!(r.to_string(), s);
        }
    }
}
