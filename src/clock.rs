//! Where `now` comes from: the wall clock, or a clock tests move by hand. Everything that
//! schedules (controllers, backends' caches) takes a [`Clock`], so tests never sleep.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;

/// The source of `now`; injected so tests never sleep.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that tests move by hand.
#[derive(Clone)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    pub fn new(t: Timestamp) -> Self {
        ManualClock(Arc::new(Mutex::new(t)))
    }
    pub fn set(&self, t: Timestamp) {
        *self.0.lock().expect("clock") = t;
    }
    pub fn advance(&self, d: std::time::Duration) {
        let mut t = self.0.lock().expect("clock");
        *t = crate::core::add(*t, d);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().expect("clock")
    }
}
