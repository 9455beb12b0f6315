//! Matching pending runs to idle instances. Pure functions, no I/O.
//!
//! A run may take an idle instance of its own namespace and pool whose offer fits the
//! run's requirements and policy ([`offer_fits`](super::offers::offer_fits)), unless the
//! instance is reserved for another run. Among those the cheapest wins, ties by name.
//! [`assign`] does this for many runs at once, oldest first, giving each instance to at
//! most one run.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::api::offer::Offer;
use crate::api::resources::{CpuArch, GpuVendor, Requirements};
use crate::core::offers::OfferQuery;
use crate::core::policy::EffectivePolicy;

#[cfg(test)]
mod tests;

/// An idle instance, as far as matching is concerned: where it is and what it is.
#[derive(Clone, Debug, PartialEq)]
pub struct IdleInstance {
    /// Name of the `Instance` object.
    pub name: String,
    /// Namespace of the `Instance` object.
    pub namespace: String,
    /// The pool the instance belongs to.
    pub pool: String,
    /// The offer the machine was launched from: its resources, placement and price.
    pub offer: Offer,
    /// The run the instance was provisioned for; while set, only that run may take it.
    pub reserved_for: Option<String>,
}

/// A run waiting for an instance.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingRun {
    /// Name of the `Run` object.
    pub name: String,
    /// Namespace of the `Run` object.
    pub namespace: String,
    /// The pool the run takes instances from.
    pub pool: String,
    /// What the instance must have.
    pub requirements: Requirements,
    /// Spot policy, max price and backend/region/instance type filters the instance's
    /// offer must meet.
    pub policy: EffectivePolicy,
    /// When set, the run takes this instance (if it fits and is free) or none.
    pub pinned_instance: Option<String>,
}

/// Whether `run` may take `instance`, ignoring whether another run took it first.
fn eligible(run: &PendingRun, query: &OfferQuery<'_>, instance: &IdleInstance) -> bool {
    instance.namespace == run.namespace
        && instance.pool == run.pool
        && run.pinned_instance.as_ref().is_none_or(|pin| *pin == instance.name)
        && instance.reserved_for.as_ref().is_none_or(|r| *r == run.name)
        && query.fits(&instance.offer)
}

/// Preference between two candidate instances: cheaper, then by name, then by position.
fn better(idle: &[IdleInstance], a: usize, b: usize) -> Ordering {
    let (x, y) = (&idle[a], &idle[b]);
    x.offer.price.total_cmp(&y.offer.price).then_with(|| x.name.cmp(&y.name)).then(a.cmp(&b))
}

/// The instance `run` should take, as an index into `idle`: one of the run's namespace
/// and pool whose offer fits the run's requirements and policy (resources, spot policy,
/// max price, backend/region/instance type filters), that is not reserved for another
/// run, and — when the run is pinned — the pinned one. The cheapest wins, ties by name.
/// A pinned instance that does not fit or is reserved for another run gives `None`.
pub fn pick_instance(run: &PendingRun, idle: &[IdleInstance]) -> Option<usize> {
    pick_naive(run, idle, &[])
}

fn pick_naive(run: &PendingRun, idle: &[IdleInstance], taken: &[bool]) -> Option<usize> {
    let query = OfferQuery::new(&run.requirements, &run.policy);
    (0..idle.len())
        .filter(|&i| !taken.get(i).copied().unwrap_or(false) && eligible(run, &query, &idle[i]))
        .min_by(|&a, &b| better(idle, a, b))
}

/// [`assign`] by the obvious O(runs × instances) loop: each run, oldest first, takes what
/// [`pick_instance`] gives it among the instances not taken yet. The reference that
/// [`assign`] is tested and benchmarked against.
pub fn assign_naive(runs: &[PendingRun], idle: &[IdleInstance]) -> Vec<(usize, usize)> {
    let mut taken = vec![false; idle.len()];
    let mut out = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        if let Some(i) = pick_naive(run, idle, &taken) {
            taken[i] = true;
            out.push((r, i));
        }
    }
    out
}

/// Assigns idle instances to pending runs, given oldest first: pairs of (run index,
/// instance index), in run order. Each run gets what [`pick_instance`] would give it
/// among the instances that earlier runs did not take, so every instance and every run
/// appears at most once. Same result as [`assign_naive`], but instances are bucketed by
/// (namespace, pool) and grouped by identical offers ("shapes") kept in price order, so
/// a run checks each shape of its pool once instead of every instance.
pub fn assign(runs: &[PendingRun], idle: &[IdleInstance]) -> Vec<(usize, usize)> {
    let mut buckets = Buckets::new(idle);
    let mut taken = vec![false; idle.len()];
    let mut out = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        let Some(bucket) = buckets.get_mut(&run.namespace, &run.pool) else {
            continue;
        };
        let query = OfferQuery::new(&run.requirements, &run.policy);
        let pick = match &run.pinned_instance {
            Some(pin) => bucket.pick_pinned(run, &query, pin, idle, &taken),
            None => bucket.pick(run, &query, idle, &taken),
        };
        if let Some(i) = pick {
            taken[i] = true;
            out.push((r, i));
        }
    }
    out
}

/// Everything about an offer that matching can look at, by value, for grouping.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct ShapeKey<'a> {
    backend: &'a str,
    region: &'a str,
    instance_type: &'a str,
    cpu: u32,
    cpu_arch: Option<CpuArch>,
    memory: u64,
    disk: Option<u64>,
    gpu_count: u32,
    gpu_name: Option<&'a str>,
    gpu_memory: u64,
    gpu_vendor: Option<GpuVendor>,
    compute_capability: Option<&'a str>,
    spot: bool,
    price: u64,
}

impl<'a> ShapeKey<'a> {
    fn of(o: &'a Offer) -> Self {
        ShapeKey {
            backend: &o.backend,
            region: &o.region,
            instance_type: &o.instance_type,
            cpu: o.cpu,
            cpu_arch: o.cpu_arch,
            memory: o.memory.to_bits(),
            disk: o.disk.map(f64::to_bits),
            gpu_count: o.gpu_count,
            gpu_name: o.gpu_name.as_deref(),
            gpu_memory: o.gpu_memory.to_bits(),
            gpu_vendor: o.gpu_vendor,
            compute_capability: o.compute_capability.as_deref(),
            spot: o.spot,
            price: o.price.to_bits(),
        }
    }
}

/// Unreserved instances with identical offers, by name then position.
struct Shape {
    /// An instance whose offer stands for the whole shape.
    example: usize,
    queue: Vec<usize>,
    /// Queue entries before this one are taken.
    head: usize,
}

/// The instances of one (namespace, pool).
#[derive(Default)]
struct Bucket<'a> {
    /// Shapes by price.
    shapes: Vec<Shape>,
    /// `next[i]`: the first shape at or after `i` that may still have a free instance;
    /// union-find style with path compression, so exhausted shapes are skipped in
    /// amortised constant time. `next[shapes.len()]` is the end.
    next: Vec<usize>,
    /// Instances reserved for a run, by run name.
    reserved: HashMap<&'a str, Vec<usize>>,
    /// Every instance by name, for pinned runs.
    by_name: HashMap<&'a str, Vec<usize>>,
}

impl Bucket<'_> {
    fn find_live(&mut self, mut i: usize) -> usize {
        let mut root = i;
        while self.next[root] != root {
            root = self.next[root];
        }
        while self.next[i] != root {
            let up = self.next[i];
            self.next[i] = root;
            i = up;
        }
        root
    }

    /// The first free instance of shape `s`, marking the shape exhausted when none.
    fn head(&mut self, s: usize, taken: &[bool]) -> Option<usize> {
        let shape = &mut self.shapes[s];
        while let Some(&i) = shape.queue.get(shape.head) {
            if !taken[i] {
                return Some(i);
            }
            shape.head += 1;
        }
        self.next[s] = s + 1;
        None
    }

    fn pick(
        &mut self,
        run: &PendingRun,
        query: &OfferQuery<'_>,
        idle: &[IdleInstance],
        taken: &[bool],
    ) -> Option<usize> {
        let mut best: Option<usize> = None;
        let offer_to = |best: &mut Option<usize>, i: usize| {
            if best.is_none_or(|b| better(idle, i, b) == Ordering::Less) {
                *best = Some(i);
            }
        };
        if let Some(reserved) = self.reserved.get(run.name.as_str()) {
            for &i in reserved {
                if !taken[i] && query.fits(&idle[i].offer) {
                    offer_to(&mut best, i);
                }
            }
        }
        let mut s = self.find_live(0);
        while s < self.shapes.len() {
            let example = &idle[self.shapes[s].example].offer;
            // Shapes are in price order: nothing further on is cheaper than the best so
            // far, or within the run's price limit once this one is over it.
            let over = |limit: f64| example.price.total_cmp(&limit) == Ordering::Greater;
            if best.is_some_and(|b| over(idle[b].offer.price)) || run.policy.max_price.is_some_and(over) {
                break;
            }
            if let Some(i) = self.head(s, taken) {
                if query.fits(example) {
                    offer_to(&mut best, i);
                }
            }
            s = self.find_live(s + 1);
        }
        best
    }

    fn pick_pinned(
        &self,
        run: &PendingRun,
        query: &OfferQuery<'_>,
        pin: &str,
        idle: &[IdleInstance],
        taken: &[bool],
    ) -> Option<usize> {
        self.by_name
            .get(pin)?
            .iter()
            .copied()
            .filter(|&i| !taken[i] && eligible(run, query, &idle[i]))
            .min_by(|&a, &b| better(idle, a, b))
    }
}

/// Buckets by (namespace, pool).
struct Buckets<'a> {
    /// Namespace, then pool, to a position in `buckets`.
    index: HashMap<&'a str, HashMap<&'a str, usize>>,
    buckets: Vec<Bucket<'a>>,
}

impl<'a> Buckets<'a> {
    fn new(idle: &'a [IdleInstance]) -> Self {
        let mut index: HashMap<&'a str, HashMap<&'a str, usize>> = HashMap::new();
        let mut buckets: Vec<Bucket<'a>> = Vec::new();
        let mut shape_index: Vec<HashMap<ShapeKey<'a>, usize>> = Vec::new();
        for (i, inst) in idle.iter().enumerate() {
            let pools = index.entry(inst.namespace.as_str()).or_default();
            let b = *pools.entry(inst.pool.as_str()).or_insert_with(|| {
                buckets.push(Bucket::default());
                shape_index.push(HashMap::new());
                buckets.len() - 1
            });
            let bucket = &mut buckets[b];
            bucket.by_name.entry(inst.name.as_str()).or_default().push(i);
            if let Some(run) = &inst.reserved_for {
                bucket.reserved.entry(run.as_str()).or_default().push(i);
                continue;
            }
            let s = *shape_index[b].entry(ShapeKey::of(&inst.offer)).or_insert_with(|| {
                bucket.shapes.push(Shape { example: i, queue: Vec::new(), head: 0 });
                bucket.shapes.len() - 1
            });
            bucket.shapes[s].queue.push(i);
        }
        for bucket in &mut buckets {
            for shape in &mut bucket.shapes {
                shape.queue.sort_by(|&a, &b| idle[a].name.cmp(&idle[b].name).then(a.cmp(&b)));
            }
            bucket.shapes.sort_by(|x, y| idle[x.example].offer.price.total_cmp(&idle[y.example].offer.price));
            bucket.next = (0..=bucket.shapes.len()).collect();
        }
        Buckets { index, buckets }
    }

    fn get_mut(&mut self, namespace: &str, pool: &str) -> Option<&mut Bucket<'a>> {
        let b = *self.index.get(namespace)?.get(pool)?;
        Some(&mut self.buckets[b])
    }
}
