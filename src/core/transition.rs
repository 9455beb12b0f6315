//! What a decision returns: one transition of an object, for its controller to apply in
//! one place (observe → decide → apply).
//!
//! A decision takes the object's status (`&mut`), what was observed and `now`; it changes
//! the status in place and returns a [`Transition`]: whether the status changed
//! (`write`), the reason and message of the condition that says where the object stands
//! (an instance's `Ready`, a run's `Scheduled` or, once it ended, `Succeeded`), the Event
//! to send, and the one external [`Effect`] to carry out. The controller's `apply` sets
//! the condition, carries out the effect in the order the effect documents, writes the
//! status once when anything changed, and sends the Event: the only crash points of a
//! pass are there.

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
    /// Sent after the status write (or without one when nothing is written).
    pub event: Option<Event>,
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
        self.said = Some(Said { reason, message: message.into() });
        self
    }

    /// With an Event (`warning` or normal).
    pub fn event(mut self, warning: bool, reason: Reason, message: impl Into<String>) -> Self {
        self.event = Some(Event { warning, reason, message: message.into() });
        self
    }

    /// With the external effect `effect`.
    pub fn effect(mut self, effect: Effect) -> Self {
        self.effect = effect;
        self
    }
}
