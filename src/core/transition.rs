//! What a decision returns: one transition of an object, for its controller to apply in
//! one place (observe → decide → apply).
//!
//! A decision takes the object's status (`&mut`), what was observed and `now`; it changes
//! the status in place and returns a [`Transition`]: whether the status changed
//! (`write`), the reason and message of the condition that says where the object stands
//! (an instance's `Ready`, a run's `Scheduled` or, once it ended, `Succeeded`), the Events
//! to send, and the one external [`Effect`] to carry out. The controller's `apply` sets
//! the condition, carries out the effect in the order the effect documents, writes the
//! status once when anything changed, and sends the Events: the only crash points of a
//! pass are there.

use crate::api::instance::JobRef;
use crate::api::reasons::Reason;

/// A Kubernetes Event on the object.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `Warning` when true, else `Normal`.
    pub warning: bool,
    pub reason: Reason,
    pub message: String,
}

/// The condition that says where the object stands, with why.
#[derive(Clone, Debug, PartialEq)]
pub struct Said {
    pub reason: Reason,
    pub message: String,
    /// An Event with the same reason and message (`Some(warning)`), sent only when setting
    /// the condition changes it: what an object waits for is said once, not at every pass.
    pub announce: Option<bool>,
}

/// The one call outside the object's own status that a transition needs.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Effect {
    /// Nothing.
    #[default]
    None,
    /// A run: create the Instance `name` provisioned for it (a 409 means it exists).
    /// After the status write, which recorded the name: a crash in between cannot create
    /// a second one.
    CreateInstance { name: String },
    /// A run: end and delete the Instance `name` provisioned for it unless it has started
    /// launching. Before the status write: when it has started, the transition is dropped
    /// (the run waits for it) and the pass looks again at once.
    DeleteUnlaunched { name: String, why: String },
    /// A run's attempt ended: after the status write, free the instance `instance` if the
    /// run holds it. Unless the job is known to have `ended`, it is fenced first (the
    /// instance is held for the instance controller when that fails).
    Release { instance: String, ended: bool },
    /// A run's attempt `attempt` ended on `instance` (the status write moves the run to
    /// its next attempt or ends it): after the status write, free the instance if the run
    /// holds it, once the job of that attempt is fenced (unless the instance records its
    /// own); held for the instance controller when that fails.
    ReleaseAttempt { instance: String, attempt: u32 },
    /// A run whose job the executor refused before anything ran on `instance`: free the
    /// instance (no fence: nothing ran) before the status write, which ends the run. The
    /// run's status never named the instance, so once it says the run ended nothing on
    /// the run's side would free it.
    FreeUnstarted { instance: String },
    /// A run lets go of `instance` while `job` may still run there: before the run's
    /// status write, the instance is held (Busy, no run, `Fencing`, saying `why`) for the
    /// instance controller to fence. Written the other way round, a crash in between
    /// would leave the instance Busy with a run that, retried and on no instance, still
    /// counts as holding it ([`holds`](crate::core::run::holds)), and the retry would
    /// start again on the host that does not answer.
    Hold { instance: String, job: JobRef, why: String },
    /// An instance given up (Terminating with `reason`): its teardown deletes the machine.
    /// Counted as lost (the metric) once the status is written.
    Teardown { reason: Reason },
}

/// One transition of an object (see the module docs).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Transition {
    /// The decision changed the status: it is written (once). The condition in `said`
    /// is written too when setting it changes it.
    pub write: bool,
    /// The object's summary condition, as the controller maps it.
    pub said: Option<Said>,
    /// Sent in this order after the status write (or without one when nothing is
    /// written).
    pub events: Vec<Event>,
    pub effect: Effect,
}

impl Transition {
    /// Nothing changes.
    pub fn none() -> Self {
        Self::default()
    }

    /// The status changed and is written.
    pub fn write() -> Self {
        Self { write: true, ..Self::default() }
    }

    /// The summary condition says `reason`, `message`.
    pub fn said(mut self, reason: Reason, message: impl Into<String>) -> Self {
        self.said = Some(Said { reason, message: message.into(), announce: None });
        self
    }

    /// The condition it says is announced by an Event (`warning` or normal) when setting
    /// it changes it ([`Said::announce`]).
    pub fn announce(mut self, warning: bool) -> Self {
        if let Some(said) = self.said.as_mut() {
            said.announce = Some(warning);
        }
        self
    }

    /// With an Event (`warning` or normal), after those it has.
    pub fn event(mut self, warning: bool, reason: Reason, message: impl Into<String>) -> Self {
        self.events.push(Event { warning, reason, message: message.into() });
        self
    }

    /// This transition, then `next` (decided after it, on the status it left): written if
    /// either is, `next`'s condition and effect where it has them, the Events of both in
    /// order.
    pub fn then(mut self, next: Transition) -> Self {
        self.write |= next.write;
        self.said = next.said.or(self.said);
        self.events.extend(next.events);
        if next.effect != Effect::None {
            self.effect = next.effect;
        }
        self
    }

    /// With the external effect `effect`.
    pub fn effect(mut self, effect: Effect) -> Self {
        self.effect = effect;
        self
    }
}
