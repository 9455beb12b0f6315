//! Garbage collection of machines that carry kpool's tags but that no `Instance` owns.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;

use super::add;
use crate::core::machine::{Machine, MachineState};

/// The names of the machines no instance owns (`owned`), not terminated: the orphan
/// candidates of a pass.
pub fn unowned<'a>(machines: &'a [Machine], owned: &'a HashSet<String>) -> impl Iterator<Item = &'a str> {
    machines.iter().filter(|m| m.state != MachineState::Terminated && !owned.contains(&m.name)).map(|m| m.name.as_str())
}

/// Machines to collect: tagged as ours, not owned by any live instance, and seen
/// orphaned for at least `grace` (so a machine whose `Instance` status write is still
/// in flight is never collected). `first_seen` carries the orphan sightings between
/// passes; machines that are owned again or gone are forgotten.
pub fn orphans(
    machines: &[Machine],
    owned: &HashSet<String>,
    first_seen: &mut HashMap<String, Timestamp>,
    now: Timestamp,
    grace: Duration,
) -> Vec<String> {
    let orphaned: HashSet<&str> = unowned(machines, owned).collect();
    first_seen.retain(|name, _| orphaned.contains(name.as_str()));
    let mut due: Vec<String> = orphaned
        .into_iter()
        .filter(|name| {
            let seen = *first_seen.entry(name.to_string()).or_insert(now);
            now >= add(seen, grace)
        })
        .map(str::to_string)
        .collect();
    due.sort();
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, state: MachineState) -> Machine {
        Machine { name: name.into(), provider_id: name.into(), state, address: None, tags: Default::default() }
    }

    #[test]
    fn collects_only_unowned_machines_after_the_grace_period() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let grace = Duration::from_secs(600);
        let machines = vec![
            m("kpool-a", MachineState::Running),
            m("kpool-b", MachineState::Running),
            m("kpool-c", MachineState::Terminated),
        ];
        let owned = HashSet::from(["kpool-a".to_string()]);
        let mut seen = HashMap::new();
        assert!(orphans(&machines, &owned, &mut seen, t0, grace).is_empty(), "first sighting starts the grace period");
        let t1 = add(t0, Duration::from_secs(599));
        assert!(orphans(&machines, &owned, &mut seen, t1, grace).is_empty());
        let t2 = add(t0, grace);
        assert_eq!(orphans(&machines, &owned, &mut seen, t2, grace), vec!["kpool-b".to_string()]);
    }

    #[test]
    fn an_orphan_that_gets_owned_again_is_forgotten() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let grace = Duration::from_secs(60);
        let machines = vec![m("kpool-a", MachineState::Pending)];
        let mut seen = HashMap::new();
        orphans(&machines, &HashSet::new(), &mut seen, t0, grace);
        let owned = HashSet::from(["kpool-a".to_string()]);
        orphans(&machines, &owned, &mut seen, add(t0, grace), grace);
        assert!(seen.is_empty());
        // Orphaned again: the grace period starts over.
        let t = add(t0, Duration::from_secs(3600));
        assert!(orphans(&machines, &HashSet::new(), &mut seen, t, grace).is_empty());
    }
}
