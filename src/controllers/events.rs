//! Publishing Kubernetes Events (`events.k8s.io/v1`) about kpool's objects.
//!
//! The same Event published again within [`SERIES_WINDOW`] (same object, type, reason and
//! note) becomes a series: the first Event's count is raised by a patch instead of a
//! new Event being created, as `kubectl describe` and the API's own recorders do.
//!
//! kube-runtime's `Recorder` does the same, but keeps a whole copy of every Event it
//! published in the last six minutes and looks through all of them on every publish: a
//! wave of 10,000 new instances kept about 60 MB of Events and cost a scan of thousands
//! of them per Event. This keeps only what a series needs (the Event's name, its count
//! and when it was last seen) and forgets expired entries at most once per window.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;

/// How long a published Event may grow into a series.
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// Entries kept at most; beyond this, new Events are published without a series entry
/// (each repeat is an Event of its own) until expired entries are forgotten.
const MAX_SERIES: usize = 16_384;

/// What makes two publishes the same Event: the object, the type, the reason and the note
/// (an Event's note cannot change: the API server rejects such a patch), by its hash.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    namespace: String,
    name: String,
    warning: bool,
    reason: String,
    note: u64,
}

struct Series {
    event: String,
    count: i32,
    last: Timestamp,
}

/// Publishes Events as `controller` (and `instance`, the pod, when set).
pub struct Publisher {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    by_key: HashMap<Key, Series>,
    pruned: Option<Timestamp>,
}

impl Recent {
    /// Forgets the entries older than the window, at most once per window's tenth.
    fn prune(&mut self, now: Timestamp) {
        let due = self.pruned.is_none_or(|t| now.duration_since(t) >= SERIES_WINDOW / 10);
        if due || self.by_key.len() >= MAX_SERIES {
            self.by_key.retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
            self.pruned = Some(now);
        }
    }
}

impl Publisher {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Publisher {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            series: Mutex::default(),
        }
    }

    /// Publishes an Event about the object `regarding` points at: a new one, or the next
    /// of a series (see the module's documentation).
    pub async fn publish(
        &self,
        regarding: ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let ns = regarding.namespace.clone().unwrap_or_else(|| "default".to_string());
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            namespace: ns.clone(),
            name: regarding.name.clone().unwrap_or_default(),
            warning,
            reason: reason.to_string(),
            note: {
                use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
                BuildHasherDefault::<DefaultHasher>::default().hash_one(&note)
            },
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let repeat = {
            let mut recent = self.series.lock().expect("events");
            recent.prune(now);
            recent.by_key.get_mut(&key).filter(|s| now.duration_since(s.last) < SERIES_WINDOW).map(|s| {
                s.count += 1;
                s.last = now;
                (s.event.clone(), s.count)
            })
        };
        if let Some((name, count)) = repeat {
            let series = EventSeries { count, last_observed_time: MicroTime(now) };
            let patch = serde_json::json!({ "series": series });
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                // Gone (expired or deleted by hand): a new Event starts a new series.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let name = format!("{}.{:x}", key.name, now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(ns), ..Default::default() },
            event_time: Some(MicroTime(now)),
            action: Some(reason.to_string()),
            reason: Some(reason.to_string()),
            note: Some(note),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_string()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        let mut recent = self.series.lock().expect("events");
        if recent.by_key.len() < MAX_SERIES {
            recent.by_key.insert(key, Series { event: name, count: 1, last: now });
        }
        Ok(())
    }

    /// Series entries kept now (for tests).
    pub fn kept(&self) -> usize {
        self.series.lock().expect("events").by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(last: Timestamp) -> Series {
        Series { event: "e".into(), count: 1, last }
    }

    fn key(n: usize) -> Key {
        Key {
            uid: format!("u{n}"),
            namespace: "ns".into(),
            name: format!("i{n}"),
            warning: false,
            reason: "Launched".into(),
            note: 0,
        }
    }

    #[test]
    fn expired_entries_are_forgotten_once_the_prune_is_due() {
        let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1000);
        let mut r = Recent::default();
        r.prune(t0);
        r.by_key.insert(key(1), series(t0));
        r.by_key.insert(key(2), series(t0 + SignedDuration::from_mins(5)));
        // Not due yet: nothing is looked at, even what has expired.
        r.prune(t0 + SignedDuration::from_secs(30));
        assert_eq!(r.by_key.len(), 2);
        r.prune(t0 + SignedDuration::from_mins(7));
        assert_eq!(r.by_key.len(), 1, "the entry last seen 7 minutes ago is gone");
        assert!(r.by_key.contains_key(&key(2)));
    }

    #[test]
    fn a_full_table_is_pruned_before_its_time() {
        let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1000);
        let expired = t0 - SERIES_WINDOW;
        let mut r = Recent::default();
        r.prune(t0);
        for n in 0..MAX_SERIES - 1 {
            r.by_key.insert(key(n), series(expired));
        }
        r.prune(t0 + SignedDuration::from_secs(1));
        assert_eq!(r.by_key.len(), MAX_SERIES - 1, "not due and not full: kept");
        r.by_key.insert(key(MAX_SERIES), series(expired));
        r.prune(t0 + SignedDuration::from_secs(2));
        assert!(r.by_key.is_empty(), "full: every expired entry goes, though not due");
    }
}
