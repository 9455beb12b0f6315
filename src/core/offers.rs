//! Offers against requirements and policies: which offers fit, which is cheapest, and
//! which to try next after a provisioning failure. Pure functions, no I/O.
//!
//! Resource matching follows gpuhunt's `matches` (`gpuhunt/_internal/constraints.py`,
//! gpuhunt 0.1.34) fed by dstack's `requirements_to_query_filter`
//! (`dstack/_internal/core/backends/base/offers.py`, dstack 0.22.5); the places where
//! kpool decides differently say so.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::api::instance::ProvisioningAttempt;
use crate::api::offer::Offer;
use crate::api::policy::SpotPolicy;
use crate::api::resources::{CpuArch, GpuSpec, GpuVendor, Requirements};
use crate::core::policy::EffectivePolicy;

mod known_gpus;
#[cfg(test)]
pub(crate) mod proptests;
#[cfg(test)]
mod ranking_tests;
#[cfg(test)]
pub(crate) mod tests;

/// Whether `offer` meets the resource requirements and the placement policy.
///
/// Resources, as gpuhunt's `matches`:
/// - ranges are inclusive; an exact value is a range with `min == max`;
/// - CPU architecture: an offer without one is x86 (dstack's `offer_to_catalog_item`);
/// - disk: an offer without a disk size (chosen at launch) fits any disk requirement;
/// - `gpu: None` places no GPU constraint at all, so a CPU-only requirement also fits GPU
///   machines. This is dstack's behaviour: an unset `gpu` is `GPUSpec(count=0..)`
///   (`DEFAULT_GPU_SPEC` in `core/models/resources.py`), and with a minimum count of 0
///   gpuhunt accepts every machine. Ranking by price puts CPU machines first anyway; ask
///   for `gpu: 0` to exclude GPU machines;
/// - with a minimum GPU count of 0 a machine without GPUs skips every GPU filter (name,
///   vendor, memory, compute capability), as gpuhunt does;
/// - GPU names compare case-insensitively; an offer without a GPU name fails a name filter;
/// - GPU vendor: the offer's, else the vendor of a well-known GPU name; unknown fails a
///   vendor filter;
/// - per-GPU memory of a machine without GPUs is 0; total GPU memory is count × per-GPU
///   memory;
/// - compute capability is a minimum, NVIDIA only: the offer's own value when it carries
///   one, else the value of a well-known NVIDIA GPU name; unknown does not fit (gpuhunt
///   returns `False` when `get_compute_capability` finds nothing).
///
/// Policy: `Spot` only spot offers, `OnDemand` only on-demand, `Auto` both (dstack's
/// `get_policy_map`); `max_price` keeps offers with `price <= max`; `backends` compares
/// names exactly, `regions` and `instance_types` case-sensitively, empty lists allow all.
pub fn offer_fits(req: &Requirements, policy: &EffectivePolicy, offer: &Offer) -> bool {
    OfferQuery::new(req, policy).fits(offer)
}

/// Requirements and policy prepared once (lowercased GPU names, spot filter) so that
/// many offers can be checked against them cheaply. [`offer_fits`] in reusable form.
#[derive(Clone, Debug)]
pub struct OfferQuery<'r> {
    req: &'r Requirements,
    policy: &'r EffectivePolicy,
    /// `Some(true)`: spot only; `Some(false)`: on-demand only; `None`: both.
    spot: Option<bool>,
    /// Accepted GPU names, lowercased; empty means any.
    gpu_names: Vec<String>,
}

impl<'r> OfferQuery<'r> {
    /// Prepares `req` and `policy` for matching.
    pub fn new(req: &'r Requirements, policy: &'r EffectivePolicy) -> Self {
        let spot = match policy.spot_policy {
            SpotPolicy::Spot => Some(true),
            SpotPolicy::OnDemand => Some(false),
            // Either may be reused; a launch resolves it first (`EffectivePolicy::for_launch`):
            // spot until it falls back.
            SpotPolicy::Auto | SpotPolicy::SpotThenOnDemand => None,
        };
        let gpu_names =
            req.gpu.as_ref().map(|g| g.names.iter().map(|n| n.to_lowercase()).collect()).unwrap_or_default();
        OfferQuery { req, policy, spot, gpu_names }
    }

    /// Whether `offer` fits; see [`offer_fits`] for the rules.
    pub fn fits(&self, offer: &Offer) -> bool {
        self.fits_resources(offer) && self.fits_policy(offer)
    }

    fn fits_policy(&self, offer: &Offer) -> bool {
        let p = self.policy;
        if self.spot.is_some_and(|spot| offer.spot != spot) {
            return false;
        }
        if p.max_price.is_some_and(|max| offer.price.is_nan() || offer.price > max) {
            return false;
        }
        allowed(&p.backends, &offer.backend)
            && allowed(&p.regions, &offer.region)
            && allowed(&p.instance_types, &offer.instance_type)
    }

    fn fits_resources(&self, offer: &Offer) -> bool {
        let req = self.req;
        if req.cpu.arch.is_some_and(|arch| offer.cpu_arch.unwrap_or(CpuArch::X86) != arch) {
            return false;
        }
        if !req.cpu.count.contains(offer.cpu) || !req.memory.contains(offer.memory) {
            return false;
        }
        if let Some(gpu) = &req.gpu {
            if !self.fits_gpu(gpu, offer) {
                return false;
            }
        }
        match (&req.disk, offer.disk) {
            (Some(range), Some(size)) => range.contains(size),
            _ => true,
        }
    }

    fn fits_gpu(&self, gpu: &GpuSpec, offer: &Offer) -> bool {
        if gpu.count.min == Some(0) && offer.gpu_count == 0 {
            return true;
        }
        if gpu.vendor.is_some() && gpu.vendor != effective_vendor(offer) {
            return false;
        }
        if !gpu.count.contains(offer.gpu_count) {
            return false;
        }
        if !self.gpu_names.is_empty() {
            let Some(name) = offer.gpu_name.as_deref() else {
                return false;
            };
            if !self.gpu_names.iter().any(|wanted| eq_lowered(name, wanted)) {
                return false;
            }
        }
        if let Some(min) = gpu.compute_capability {
            if effective_vendor(offer) != Some(GpuVendor::Nvidia) {
                return false;
            }
            if compute_capability(offer).is_none_or(|cc| cc < min) {
                return false;
            }
        }
        let per_gpu = if offer.gpu_count > 0 { offer.gpu_memory } else { 0.0 };
        let total = per_gpu * f64::from(offer.gpu_count);
        gpu.memory.is_none_or(|r| r.contains(per_gpu)) && gpu.total_memory.is_none_or(|r| r.contains(total))
    }
}

/// An empty allow-list allows everything.
fn allowed(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|v| v == value)
}

/// `name` equals `lowered` (already lowercase) ignoring case, without allocating for
/// ASCII names.
fn eq_lowered(name: &str, lowered: &str) -> bool {
    if name.is_ascii() {
        name.eq_ignore_ascii_case(lowered)
    } else {
        name.to_lowercase() == lowered
    }
}

/// The offer's GPU vendor, else the vendor of its well-known GPU name; a compute
/// capability is NVIDIA-only, so an offer carrying one is NVIDIA.
fn effective_vendor(offer: &Offer) -> Option<GpuVendor> {
    offer
        .gpu_vendor
        .or_else(|| offer.gpu_name.as_deref().and_then(known_gpus::vendor_of))
        .or_else(|| offer.compute_capability.as_ref().map(|_| GpuVendor::Nvidia))
}

/// The offer's own compute capability (`"8.0"`, or `"8"` for `8.0`) when it carries a
/// valid one, else that of its well-known NVIDIA GPU name.
fn compute_capability(offer: &Offer) -> Option<(u32, u32)> {
    offer
        .compute_capability
        .as_deref()
        .and_then(parse_compute_capability)
        .or_else(|| offer.gpu_name.as_deref().and_then(known_gpus::nvidia_compute_capability))
}

fn parse_compute_capability(s: &str) -> Option<(u32, u32)> {
    let s = s.trim();
    match s.split_once('.') {
        Some((major, minor)) => Some((major.parse().ok()?, minor.parse().ok()?)),
        None => Some((s.parse().ok()?, 0)),
    }
}

/// The ranking order: cheapest first, then backend, region, instance type, and
/// on-demand before spot, so that equal prices rank the same way every time.
pub fn offer_order(a: &Offer, b: &Offer) -> Ordering {
    a.price
        .total_cmp(&b.price)
        .then_with(|| a.backend.cmp(&b.backend))
        .then_with(|| a.region.cmp(&b.region))
        .then_with(|| a.instance_type.cmp(&b.instance_type))
        .then_with(|| a.spot.cmp(&b.spot))
}

/// A heap entry: the offer (borrowed or owned) and its position in the input, the last
/// tie-breaker, which makes the result equal to a stable sort.
struct Ranked<O> {
    offer: O,
    seq: usize,
}

impl<O: Borrow<Offer>> Ord for Ranked<O> {
    fn cmp(&self, other: &Self) -> Ordering {
        offer_order(self.offer.borrow(), other.offer.borrow()).then(self.seq.cmp(&other.seq))
    }
}

impl<O: Borrow<Offer>> PartialOrd for Ranked<O> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<O: Borrow<Offer>> PartialEq for Ranked<O> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<O: Borrow<Offer>> Eq for Ranked<O> {}

/// The best `limit` offers that fit a requirement and a policy among those pushed so far,
/// one offer at a time: [`rank_offers`] for offers that are not all in memory at once.
/// A bounded heap: O(n log limit) time, O(limit) memory.
///
/// `O` is how a kept offer is held: `&Offer` when the offers outlive the ranking, `Offer`
/// when they are read one by one into a reused buffer (a catalog file), so that only the
/// offers that make it into the best `limit` are cloned.
pub struct TopOffers<'q, O> {
    query: OfferQuery<'q>,
    limit: usize,
    /// A max-heap: its top is the worst of the best `limit` seen so far.
    heap: BinaryHeap<Ranked<O>>,
    seq: usize,
}

impl<'q, O: Borrow<Offer>> TopOffers<'q, O> {
    /// Keeps at most `limit` offers that fit `req` and `policy`.
    pub fn new(req: &'q Requirements, policy: &'q EffectivePolicy, limit: usize) -> Self {
        let heap = BinaryHeap::with_capacity(limit.min(1024) + 1);
        TopOffers { query: OfferQuery::new(req, policy), limit, heap, seq: 0 }
    }

    /// Considers `offer`, the next one in input order; `keep` makes what is kept of it and
    /// is called only when `offer` fits and is among the best so far.
    pub fn push<'o>(&mut self, offer: &'o Offer, keep: impl FnOnce(&'o Offer) -> O) {
        let seq = self.seq;
        self.seq += 1;
        if self.heap.len() == self.limit {
            // Cheap rejection before the fit check: worse than the worst kept (or limit 0).
            match self.heap.peek() {
                Some(worst) if offer_order(offer, worst.offer.borrow()) == Ordering::Less => {}
                _ => return,
            }
        }
        if !self.query.fits(offer) {
            return;
        }
        let entry = Ranked { offer: keep(offer), seq };
        if self.heap.len() < self.limit {
            self.heap.push(entry);
        } else if let Some(mut worst) = self.heap.peek_mut() {
            *worst = entry;
        }
    }

    /// The kept offers, cheapest first; equal ones in input order.
    pub fn into_sorted(self) -> Vec<O> {
        self.heap.into_sorted_vec().into_iter().map(|r| r.offer).collect()
    }
}

/// The offers that fit `req` and `policy`, in [`offer_order`] (cheapest first), at most
/// `limit` of them. Offers that compare equal keep their input order. Keeps a bounded
/// heap of the best `limit` offers ([`TopOffers`]): O(n log limit) time, O(limit) memory.
pub fn rank_offers<'a, I: IntoIterator<Item = &'a Offer>>(
    offers: I,
    req: &Requirements,
    policy: &EffectivePolicy,
    limit: usize,
) -> Vec<Offer> {
    let mut top = TopOffers::new(req, policy, limit);
    for offer in offers {
        top.push(offer, |o| o);
    }
    top.into_sorted().into_iter().cloned().collect()
}

/// Whether two offers are the same machine type at the same place: backend, region,
/// instance type and spot-ness (not the price, which may have moved).
pub fn same_offer(a: &Offer, b: &Offer) -> bool {
    a.backend == b.backend && a.region == b.region && a.instance_type == b.instance_type && a.spot == b.spot
}

/// The first offer of `ranked` (cheapest first, as [`rank_offers`] returns them) that has
/// not been tried yet: after a failed attempt, provisioning falls back to the next offer.
/// `None` when every offer has been tried.
pub fn next_offer<'a>(ranked: &'a [Offer], tried: &[ProvisioningAttempt]) -> Option<&'a Offer> {
    ranked.iter().find(|o| !tried.iter().any(|t| same_offer(o, &t.offer)))
}
