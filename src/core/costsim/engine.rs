//! The event loop of the simulator: virtual time in milliseconds, kpool's decisions at
//! every event.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{quantile, Config, Policy, PolicyReport, Sample, TraceRun};
use crate::api::instance::{AutoIdle, InstancePhase, InstanceStatus, JobRef};
use crate::api::offer::Offer;
use crate::api::run::RunStatus;
use crate::core::idle_auto::spell::{self, ShapeGaps};
use crate::core::instance::{self, Step};
use crate::core::machine::{Machine, MachineState};
use crate::core::matching::{assign, IdleInstance, PendingRun};
use crate::core::offers::rank_offers;
use crate::core::policy::{EffectivePolicy, Origin};
use crate::core::run::{no_fit, NoFit};

const NAMESPACE: &str = "sim";

/// Events at the same moment run in this order: runs end (freeing machines), machines
/// become ready, idle deadlines fall due, then runs arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The run on instance `.0` ends.
    Finish(usize),
    Ready(usize),
    /// An idle deadline of instance `.0`, set during its idle spell `.1`.
    Deadline(usize, u64),
    Arrive(usize),
}

struct Inst {
    name: String,
    pool: String,
    offer: Offer,
    status: InstanceStatus,
    policy: EffectivePolicy,
    launched: i64,
    terminated: Option<i64>,
    /// The run this machine was launched for, until it takes it; under
    /// [`Policy::Clairvoyant`] also the run an idle machine is kept for, so that no other
    /// run takes it (matching gives a run the instance reserved for it).
    reserved_for: Option<usize>,
    busy_ms: i64,
    /// Counts idle spells, so a deadline of an earlier spell is ignored.
    spell: u64,
    /// The `auto` deadline of the current idle spell, as the instance's status records it.
    auto: Option<AutoIdle>,
}

/// (pool, shape of the offer): what the clairvoyant's future is kept by.
type ShapeKey = (String, String);

fn shape(offer: &Offer) -> String {
    format!("{}/{}/{}{}", offer.backend, offer.region, offer.instance_type, if offer.spot { "/spot" } else { "" })
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX)
}

fn ms_of(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn secs_to_ms(s: f64) -> i64 {
    (s * 1000.0).round() as i64
}

struct Sim<'a> {
    trace: &'a [TraceRun],
    config: &'a Config,
    policy: &'a Policy,
    boot_ms: i64,
    queue: BinaryHeap<Reverse<(i64, Event)>>,
    insts: Vec<Inst>,
    run_policy: EffectivePolicy,
    started: Vec<Option<i64>>,
    reused: usize,
    unplaceable: usize,
    /// Learned gaps per (pool, shape as a pool's `status.idleGaps` keys it), for `auto`:
    /// what the controllers keep in each pool's status, updated by the same functions.
    stats: BTreeMap<ShapeKey, ShapeGaps>,
    /// When each pool's last run arrived (ms).
    last_arrival: HashMap<String, i64>,
    timeline: Vec<Sample>,
    cost: f64,
    last_t: i64,
    /// For [`Policy::Clairvoyant`]: runs by (pool, shape of their cheapest offer), in
    /// arrival order, and whether an idle instance already waits for each.
    future: HashMap<ShapeKey, Vec<usize>>,
    promised: Vec<bool>,
}

/// Replays `trace` under `policy` and reports what it cost.
pub fn simulate(trace: &[TraceRun], config: &Config, policy: &Policy) -> PolicyReport {
    let mut sim = Sim {
        trace,
        config,
        policy,
        boot_ms: config.boot.as_millis() as i64,
        queue: BinaryHeap::new(),
        insts: Vec::new(),
        run_policy: EffectivePolicy::defaults(Origin::Run),
        started: vec![None; trace.len()],
        reused: 0,
        unplaceable: 0,
        stats: BTreeMap::new(),
        last_arrival: HashMap::new(),
        timeline: Vec::new(),
        cost: 0.0,
        last_t: 0,
        future: HashMap::new(),
        promised: vec![false; trace.len()],
    };
    if *policy == Policy::Clairvoyant {
        let mut order: Vec<usize> = (0..trace.len()).collect();
        order.sort_by(|&a, &b| trace[a].arrival.total_cmp(&trace[b].arrival).then(a.cmp(&b)));
        for r in order {
            if let Some(offer) = sim.cheapest(r) {
                sim.future.entry((trace[r].pool.clone(), shape(&offer))).or_default().push(r);
            }
        }
    }
    for (i, r) in trace.iter().enumerate() {
        sim.queue.push(Reverse((secs_to_ms(r.arrival), Event::Arrive(i))));
    }
    sim.run();
    sim.report()
}

impl Sim<'_> {
    fn run(&mut self) {
        let mut end_of_work = 0;
        while let Some(Reverse((t, event))) = self.queue.pop() {
            self.advance(t);
            match event {
                Event::Finish(r) => {
                    end_of_work = end_of_work.max(t);
                    self.finish(r, t);
                }
                Event::Ready(i) => self.ready(i, t),
                Event::Deadline(i, spell) => self.deadline(i, spell, t),
                Event::Arrive(r) => {
                    let mut batch = vec![r];
                    while let Some(Reverse((t2, Event::Arrive(r2)))) = self.queue.peek().copied() {
                        if t2 != t {
                            break;
                        }
                        self.queue.pop();
                        batch.push(r2);
                    }
                    self.arrive(&batch, t);
                }
            }
            if self.queue.peek().is_none_or(|Reverse((t2, _))| *t2 != t) {
                self.sample(t);
            }
        }
        // Keep-forever machines: billed until the last run ended.
        let end = end_of_work.max(self.last_t);
        self.advance(end);
        for inst in &mut self.insts {
            if inst.terminated.is_none() {
                inst.terminated = Some(end);
            }
        }
        self.sample(end);
    }

    /// Bills the live machines up to `t`.
    fn advance(&mut self, t: i64) {
        if t > self.last_t {
            let rate: f64 = self.insts.iter().filter(|i| i.terminated.is_none()).map(|i| i.offer.price).sum();
            self.cost += rate * (t - self.last_t) as f64 / 3_600_000.0;
            self.last_t = t;
        }
    }

    fn sample(&mut self, t: i64) {
        let live: Vec<&Inst> = self.insts.iter().filter(|i| i.terminated.is_none()).collect();
        let idle = live.iter().filter(|i| i.status.phase == InstancePhase::Idle).count() as u32;
        let busy = live.iter().filter(|i| i.status.phase == InstancePhase::Busy).count() as u32;
        self.timeline.push(Sample { t: t as f64 / 1000.0, live: live.len() as u32, idle, busy, cost: self.cost });
    }

    fn job(&self, r: usize) -> JobRef {
        JobRef { run: format!("r{r}"), run_uid: format!("uid-{r}"), attempt: 0 }
    }

    fn arrive(&mut self, batch: &[usize], t: i64) {
        for &r in batch {
            self.last_arrival.insert(self.trace[r].pool.clone(), t);
        }
        let mut order = batch.to_vec();
        order.sort_by_key(|&r| (Reverse(self.trace[r].priority), secs_to_ms(self.trace[r].arrival), r));
        let pending: Vec<PendingRun> = order
            .iter()
            .map(|&r| PendingRun {
                name: format!("r{r}"),
                namespace: NAMESPACE.into(),
                pool: self.trace[r].pool.clone(),
                requirements: self.trace[r].requirements.clone(),
                policy: self.run_policy.clone(),
                pinned_instance: None,
            })
            .collect();
        let idle_idx: Vec<usize> = (0..self.insts.len())
            .filter(|&i| self.insts[i].status.phase == InstancePhase::Idle && self.insts[i].terminated.is_none())
            .collect();
        let idle: Vec<IdleInstance> = idle_idx
            .iter()
            .map(|&i| IdleInstance {
                name: self.insts[i].name.clone(),
                namespace: NAMESPACE.into(),
                pool: self.insts[i].pool.clone(),
                offer: self.insts[i].offer.clone(),
                reserved_for: self.insts[i].reserved_for.map(|r| format!("r{r}")),
            })
            .collect();
        let matched = assign(&pending, &idle);
        let mut placed = vec![false; order.len()];
        for (p, k) in matched {
            placed[p] = true;
            self.reused += 1;
            self.take(idle_idx[k], order[p], t);
        }
        for (p, &r) in order.iter().enumerate() {
            if !placed[p] {
                self.provision(r, t);
            }
        }
    }

    /// Instance `i` (idle) takes run `r` now.
    fn take(&mut self, i: usize, r: usize, t: i64) {
        if let Some(record) = self.insts[i].auto.take() {
            let key = (self.insts[i].pool.clone(), spell::shape(&self.insts[i].status));
            let gaps = self.stats.entry(key).or_default();
            match self.insts[i].reserved_for == Some(r) {
                true => spell::close_launched_for(gaps, &record),
                false => {
                    spell::close_reused(gaps, &record, ts(t));
                    spell::saving_reused(&mut self.insts[i].status, &record, ts(t));
                }
            }
        }
        let job = self.job(r);
        let inst = &mut self.insts[i];
        instance::claim(&mut inst.status, job, ts(t));
        inst.reserved_for = None;
        self.started[r] = Some(t);
        let end = t + secs_to_ms(self.trace[r].duration);
        self.insts[i].busy_ms += end - t;
        self.queue.push(Reverse((end, Event::Finish(i))));
    }

    /// The offer a machine for run `r` is launched from.
    fn cheapest(&self, r: usize) -> Option<Offer> {
        rank_offers(&self.config.catalog, &self.trace[r].requirements, &self.run_policy, 1).into_iter().next()
    }

    /// How long [`Policy::Clairvoyant`] keeps instance `i`, idle from `t`.
    fn clairvoyant(&mut self, i: usize, t: i64) -> Duration {
        let key = (self.insts[i].pool.clone(), shape(&self.insts[i].offer));
        let Some(runs) = self.future.get(&key) else {
            return Duration::ZERO;
        };
        let from = runs.partition_point(|&r| secs_to_ms(self.trace[r].arrival) < t);
        let next = runs[from..].iter().copied().find(|&r| !self.promised[r]);
        match next {
            Some(r) if secs_to_ms(self.trace[r].arrival) - t < self.boot_ms => {
                self.promised[r] = true;
                // The run it is kept for takes it: were another run to, this instance
                // would be gone when that run arrives, and the one kept for the other
                // would idle for nothing.
                self.insts[i].reserved_for = Some(r);
                // One millisecond past the arrival: deadlines fall due before arrivals of
                // the same moment.
                Duration::from_millis((secs_to_ms(self.trace[r].arrival) - t + 1) as u64)
            }
            _ => Duration::ZERO,
        }
    }

    fn provision(&mut self, r: usize, t: i64) {
        let run = &self.trace[r];
        let status = RunStatus { submitted_at: Some(Time(ts(t))), ..RunStatus::default() };
        if no_fit(&status, &self.run_policy, &run.pool, true, None, ts(t)) != NoFit::Provision {
            self.unplaceable += 1;
            return;
        }
        let Some(offer) = self.cheapest(r) else {
            self.unplaceable += 1;
            return;
        };
        let i = self.insts.len();
        let mut status = InstanceStatus {
            machine_name: Some(format!("m{i}")),
            pool: Some(run.pool.clone()),
            ..InstanceStatus::default()
        };
        instance::start_provisioning(&mut status, offer.clone(), ts(t));
        // A run that launches a machine tells the gaps of the shape's expired spells.
        if let Some(gaps) = self.stats.get_mut(&(run.pool.clone(), spell::shape(&status))) {
            spell::launched(gaps, ts(t));
        }
        self.insts.push(Inst {
            name: format!("i{i:07}"),
            pool: run.pool.clone(),
            offer,
            status,
            policy: self.run_policy.clone(),
            launched: t,
            terminated: None,
            reserved_for: Some(r),
            busy_ms: 0,
            spell: 0,
            auto: None,
        });
        self.queue.push(Reverse((t + self.boot_ms, Event::Ready(i))));
    }

    fn ready(&mut self, i: usize, t: i64) {
        let machine = Machine {
            name: format!("m{i}"),
            provider_id: format!("sim-{i}"),
            state: MachineState::Running,
            address: None,
            tags: Default::default(),
        };
        instance::launched(&mut self.insts[i].status, &machine, ts(t));
        if let Some(r) = self.insts[i].reserved_for {
            self.take(i, r, t);
        }
    }

    fn finish(&mut self, i: usize, t: i64) {
        let foreseen = if *self.policy == Policy::Clairvoyant { self.clairvoyant(i, t) } else { Duration::ZERO };
        instance::release(&mut self.insts[i].status, ts(t));
        self.insts[i].spell += 1;
        let limit = match self.policy {
            Policy::NoReuse => Some(Duration::ZERO),
            Policy::Fixed(d) => Some(*d),
            Policy::KeepForever => None,
            Policy::SkiRental => Some(self.config.boot),
            Policy::Clairvoyant => Some(foreseen),
            Policy::Auto => self.decide_auto(i),
        };
        let inst = &mut self.insts[i];
        inst.policy.idle_duration = limit;
        let spell = inst.spell;
        self.check_idle(i, spell, t);
    }

    /// The `auto` deadline of instance `i`, just gone idle, as the instance controller
    /// chooses it: from the pool's learned gaps and the spell's context.
    fn decide_auto(&mut self, i: usize) -> Option<Duration> {
        let inst = &self.insts[i];
        let last = self.last_arrival.get(&inst.pool).map(|&a| ts(a));
        let live = self.insts.iter().filter(|o| o.terminated.is_none()).map(|o| (o.name.as_str(), &o.status));
        let context = spell::context(&inst.name, &inst.status, live, last);
        let gaps = self.stats.entry((inst.pool.clone(), spell::shape(&inst.status))).or_default();
        let (record, decision) = spell::choose(&inst.status, Some(gaps), &context)?;
        gaps.summary.open(&decision);
        self.insts[i].auto = Some(record);
        Some(decision.idle)
    }

    fn deadline(&mut self, i: usize, spell: u64, t: i64) {
        if self.insts[i].spell == spell && self.insts[i].status.phase == InstancePhase::Idle {
            self.check_idle(i, spell, t);
        }
    }

    /// Asks kpool's instance state machine what an idle instance does now.
    fn check_idle(&mut self, i: usize, spell: u64, t: i64) {
        let inst = &mut self.insts[i];
        match instance::next_step(&inst.status, &inst.policy, ts(t)) {
            Step::Expire => {
                instance::terminate(&mut inst.status);
                instance::gone(&mut inst.status, ts(t));
                inst.terminated = Some(t);
                if let Some(record) = inst.auto.take() {
                    spell::saving_expired(&mut inst.status, &record);
                    let key = (inst.pool.clone(), spell::shape(&inst.status));
                    spell::close_expired(self.stats.entry(key).or_default(), &record, inst.offer.price);
                }
            }
            Step::IdleUntil(Some(at)) => self.queue.push(Reverse((ms_of(at), Event::Deadline(i, spell)))),
            _ => {}
        }
    }

    fn report(self) -> PolicyReport {
        let waits: Vec<f64> = self
            .started
            .iter()
            .zip(self.trace)
            .filter_map(|(s, r)| s.map(|s| (s - secs_to_ms(r.arrival)) as f64 / 1000.0))
            .collect();
        let mut total = 0.0;
        let mut idle_cost = 0.0;
        let mut boot_cost = 0.0;
        let (mut saved_vs_5m, mut unsettled_vs_5m) = (0.0, 0);
        // Spells settled after their instance was gone, as the pool's cost keeps them.
        let later = self.stats.values().map(|g| &g.settled_vs_5m);
        let settled_later = later.clone().map(|s| s.spells).sum::<u64>();
        saved_vs_5m += later.map(|s| s.dollars).sum::<f64>();
        for inst in &self.insts {
            if let Some(u) = &inst.status.usage {
                saved_vs_5m += u.saved_vs_5m_seconds as f64 * inst.offer.price / 3600.0;
                unsettled_vs_5m += u64::from(u.unsettled_vs_5m);
            }
            let life = inst.terminated.unwrap_or(self.last_t) - inst.launched;
            let boot = self.boot_ms.min(life);
            let rate = inst.offer.price / 3_600_000.0;
            total += rate * life as f64;
            boot_cost += rate * boot as f64;
            idle_cost += rate * (life - boot - inst.busy_ms).max(0) as f64;
        }
        PolicyReport {
            policy: self.policy.name(),
            total_cost: total,
            idle_cost,
            boot_cost,
            launched: self.insts.len(),
            runs: waits.len(),
            reused: self.reused,
            unplaceable: self.unplaceable,
            wait_p50: quantile(&waits, 0.5),
            wait_p99: quantile(&waits, 0.99),
            waits,
            timeline: self.timeline,
            saved_vs_5m,
            unsettled_vs_5m: unsettled_vs_5m - settled_later,
            settled_later_vs_5m: settled_later,
        }
    }
}
