//! The effective policy of an instance or a run: object spec > `Profile` > `Pool`
//! defaults > built-in defaults.

use std::time::Duration;

use jiff::Timestamp;

use crate::api::duration::parse_duration;
use crate::api::policy::{CreationPolicy, PolicySpec, RetryEvent, SpotPolicy, TerminationPolicy};
use crate::api::resources::SpecError;

/// Idle duration of instances that a run provisioned, unless a policy says otherwise.
pub const DEFAULT_IDLE_RUN_PROVISIONED: Duration = Duration::from_secs(5 * 60);
/// Idle duration of instances added by hand, unless a policy says otherwise.
pub const DEFAULT_IDLE_MANUAL: Duration = Duration::from_secs(72 * 3600);
/// How long a retry policy retries when it does not say.
pub const DEFAULT_RETRY_DURATION: Duration = Duration::from_secs(3600);

/// Who created an instance; decides the built-in idle duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Provisioned by a run because no idle instance fitted.
    Run,
    /// Added by hand (`kubectl apply` or `kubectl pool add`).
    Manual,
}

/// A resolved retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub on: Vec<RetryEvent>,
    pub duration: Duration,
}

impl RetryPolicy {
    pub fn retries_on(&self, event: RetryEvent) -> bool {
        self.on.contains(&event)
    }
}

/// When `spot-then-on-demand` gives up on spot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpotFallback {
    /// After this many interruptions of the run's spot machines.
    pub interruptions: u32,
    /// After this long without a spot machine launched.
    pub wait: Duration,
}

/// `spotFallback`'s defaults: on-demand after one interruption or ten minutes.
pub const DEFAULT_SPOT_FALLBACK: SpotFallback = SpotFallback { interruptions: 1, wait: Duration::from_secs(600) };

/// Every policy resolved to a concrete value.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectivePolicy {
    pub spot_policy: SpotPolicy,
    /// Used with [`SpotPolicy::SpotThenOnDemand`] only.
    pub spot_fallback: SpotFallback,
    /// `None`: no price limit.
    pub max_price: Option<f64>,
    /// `None`: never retry.
    pub retry: Option<RetryPolicy>,
    /// `None`: never terminate for idleness (`off`), or `idle_auto`.
    pub idle_duration: Option<Duration>,
    /// `idleDuration: auto`: each idle spell's deadline is chosen from the pool's learned
    /// gaps ([`crate::core::idle_auto`]); `idle_duration` is then `None`.
    pub idle_auto: bool,
    pub termination_policy: TerminationPolicy,
    pub creation_policy: CreationPolicy,
    /// `None`: no limit.
    pub max_duration: Option<Duration>,
    /// Allowed `Backend` names; empty means all.
    pub backends: Vec<String>,
    /// Allowed regions; empty means all.
    pub regions: Vec<String>,
    /// Allowed instance types; empty means all.
    pub instance_types: Vec<String>,
}

impl EffectivePolicy {
    /// The built-in defaults alone.
    pub fn defaults(origin: Origin) -> Self {
        EffectivePolicy {
            spot_policy: SpotPolicy::OnDemand,
            spot_fallback: DEFAULT_SPOT_FALLBACK,
            max_price: None,
            retry: None,
            idle_duration: Some(match origin {
                Origin::Run => DEFAULT_IDLE_RUN_PROVISIONED,
                Origin::Manual => DEFAULT_IDLE_MANUAL,
            }),
            idle_auto: false,
            termination_policy: TerminationPolicy::DestroyAfterIdle,
            creation_policy: CreationPolicy::ReuseOrCreate,
            max_duration: None,
            backends: vec![],
            regions: vec![],
            instance_types: vec![],
        }
    }

    /// The policy to provision with now, and why it is on-demand when
    /// `spot-then-on-demand` fell back: spot until the run's spot machines were
    /// interrupted `spotFallback.afterInterruptions` times or spot has been tried since
    /// `since` for `spotFallback.afterWaiting`; until then a spot launch that finds no
    /// capacity is tried again (the wait is a retry window on no capacity), after it
    /// on-demand offers are tried. Other spot policies are returned as they are.
    pub fn for_launch(&self, interruptions: u32, since: Option<Timestamp>, now: Timestamp) -> (Self, Option<String>) {
        if self.spot_policy != SpotPolicy::SpotThenOnDemand {
            return (self.clone(), None);
        }
        let fb = self.spot_fallback;
        let waited = since.is_some_and(|s| now >= crate::core::add(s, fb.wait));
        let why = if interruptions >= fb.interruptions {
            Some(format!(
                "on-demand: the run lost {interruptions} spot machine(s) (spotFallback.afterInterruptions: {})",
                fb.interruptions
            ))
        } else if waited {
            Some(format!(
                "on-demand: no spot machine launched within {} (spotFallback.afterWaiting)",
                crate::api::duration::format_duration(fb.wait)
            ))
        } else {
            None
        };
        let mut p = self.clone();
        if why.is_some() {
            p.spot_policy = SpotPolicy::OnDemand;
        } else {
            p.spot_policy = SpotPolicy::Spot;
            let mut retry = p.retry.take().unwrap_or(RetryPolicy { on: vec![], duration: fb.wait });
            if !retry.on.contains(&RetryEvent::NoCapacity) {
                retry.on.push(RetryEvent::NoCapacity);
                retry.duration = fb.wait;
            }
            retry.duration = retry.duration.max(fb.wait);
            p.retry = Some(retry);
        }
        (p, why)
    }

    /// When an idle instance must be terminated, given how long it has been idle.
    /// `None`: it is kept (`off` or `DontDestroy`), or its deadline is chosen per idle
    /// spell ([`auto_idle`](Self::auto_idle)).
    pub fn idle_limit(&self) -> Option<Duration> {
        match self.termination_policy {
            TerminationPolicy::DontDestroy => None,
            TerminationPolicy::DestroyAfterIdle => self.idle_duration,
        }
    }

    /// Whether each idle spell's deadline is chosen by `idleDuration: auto` (not with
    /// `DontDestroy`, which keeps the instance).
    pub fn auto_idle(&self) -> bool {
        self.idle_auto && self.termination_policy == TerminationPolicy::DestroyAfterIdle
    }
}

/// Layers from the most to the least specific: the object's own spec, its profile,
/// its pool's profile, its pool's defaults. The first layer that sets a field wins.
pub fn effective_policy(layers: &[&PolicySpec], origin: Origin) -> Result<EffectivePolicy, SpecError> {
    fn first<'a, T>(layers: &[&'a PolicySpec], f: impl Fn(&'a PolicySpec) -> Option<T>) -> Option<T> {
        layers.iter().find_map(|l| f(l))
    }
    let mut p = EffectivePolicy::defaults(origin);
    if let Some(v) = first(layers, |l| l.spot_policy) {
        p.spot_policy = v;
    }
    if let Some(f) = first(layers, |l| l.spot_fallback.as_ref()) {
        if let Some(n) = f.after_interruptions {
            if n == 0 {
                return Err(SpecError {
                    field: "spotFallback.afterInterruptions".into(),
                    token: n.to_string(),
                    reason: "must be at least 1".into(),
                });
            }
            p.spot_fallback.interruptions = n;
        }
        if let Some(w) = &f.after_waiting {
            p.spot_fallback.wait = parse_duration("spotFallback.afterWaiting", w)?;
        }
    }
    if let Some(v) = first(layers, |l| l.max_price) {
        if !(v >= 0.0 && v.is_finite()) {
            return Err(SpecError {
                field: "maxPrice".into(),
                token: v.to_string(),
                reason: "must be a non-negative number of dollars per hour".into(),
            });
        }
        p.max_price = Some(v);
    }
    if let Some(r) = first(layers, |l| l.retry.as_ref()) {
        let duration = match &r.duration {
            Some(d) => parse_duration("retry.duration", d)?,
            None => DEFAULT_RETRY_DURATION,
        };
        let on =
            r.on.clone().unwrap_or_else(|| vec![RetryEvent::NoCapacity, RetryEvent::Interruption, RetryEvent::Error]);
        p.retry = Some(RetryPolicy { on, duration });
    }
    if let Some(v) = first(layers, |l| l.idle_duration.as_deref()) {
        p.idle_auto = v.trim() == "auto";
        p.idle_duration = match p.idle_auto {
            true => None,
            false => parse_optional_duration("idleDuration", v).map_err(|e| SpecError {
                token: v.to_string(),
                reason: format!("{} (at {:?}); give a duration such as `5m`, or `off`, or `auto`", e.reason, e.token),
                ..e
            })?,
        };
    }
    if let Some(v) = first(layers, |l| l.termination_policy) {
        p.termination_policy = v;
    }
    if let Some(v) = first(layers, |l| l.creation_policy) {
        p.creation_policy = v;
    }
    if let Some(v) = first(layers, |l| l.max_duration.as_deref()) {
        p.max_duration = parse_optional_duration("maxDuration", v)?;
    }
    if let Some(v) = first(layers, |l| l.backends.as_ref()) {
        p.backends = v.clone();
    }
    if let Some(v) = first(layers, |l| l.regions.as_ref()) {
        p.regions = v.clone();
    }
    if let Some(v) = first(layers, |l| l.instance_types.as_ref()) {
        p.instance_types = v.clone();
    }
    Ok(p)
}

/// A duration, or `off` / `-1` for none.
pub fn parse_optional_duration(field: &str, s: &str) -> Result<Option<Duration>, SpecError> {
    match s.trim() {
        "off" | "-1" => Ok(None),
        other => parse_duration(field, other).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::policy::RetrySpec;

    fn spec() -> PolicySpec {
        PolicySpec::default()
    }

    #[test]
    fn built_in_defaults_depend_on_origin() {
        let run = effective_policy(&[], Origin::Run).unwrap();
        let manual = effective_policy(&[], Origin::Manual).unwrap();
        assert_eq!(run.idle_duration, Some(Duration::from_secs(300)));
        assert_eq!(manual.idle_duration, Some(Duration::from_secs(72 * 3600)));
        assert_eq!(run.spot_policy, SpotPolicy::OnDemand);
        assert_eq!(run.creation_policy, CreationPolicy::ReuseOrCreate);
        assert_eq!(run.retry, None);
    }

    #[test]
    fn object_beats_profile_beats_pool() {
        let object = PolicySpec { max_price: Some(1.0), ..spec() };
        let profile = PolicySpec { max_price: Some(2.0), spot_policy: Some(SpotPolicy::Auto), ..spec() };
        let pool = PolicySpec {
            max_price: Some(3.0),
            spot_policy: Some(SpotPolicy::Spot),
            idle_duration: Some("10m".into()),
            regions: Some(vec!["us-east-1".into()]),
            ..spec()
        };
        let p = effective_policy(&[&object, &profile, &pool], Origin::Run).unwrap();
        assert_eq!(p.max_price, Some(1.0));
        assert_eq!(p.spot_policy, SpotPolicy::Auto);
        assert_eq!(p.idle_duration, Some(Duration::from_secs(600)));
        assert_eq!(p.regions, vec!["us-east-1".to_string()]);
        // Drop the object layer: the profile's price wins.
        let p = effective_policy(&[&profile, &pool], Origin::Run).unwrap();
        assert_eq!(p.max_price, Some(2.0));
    }

    #[test]
    fn idle_off_and_dont_destroy_mean_no_limit() {
        let off = PolicySpec { idle_duration: Some("off".into()), ..spec() };
        assert_eq!(effective_policy(&[&off], Origin::Run).unwrap().idle_limit(), None);
        let keep = PolicySpec { termination_policy: Some(TerminationPolicy::DontDestroy), ..spec() };
        let p = effective_policy(&[&keep], Origin::Run).unwrap();
        assert_eq!(p.idle_duration, Some(DEFAULT_IDLE_RUN_PROVISIONED));
        assert_eq!(p.idle_limit(), None);
    }

    #[test]
    fn idle_auto_is_its_own_rule_and_only_for_idle_duration() {
        let auto = PolicySpec { idle_duration: Some(" auto".into()), ..spec() };
        let p = effective_policy(&[&auto], Origin::Manual).unwrap();
        assert!(p.idle_auto && p.auto_idle());
        assert_eq!((p.idle_duration, p.idle_limit()), (None, None), "no fixed deadline beside auto");
        // A more specific fixed value wins over a pool's auto, and the other way round.
        let fixed = PolicySpec { idle_duration: Some("10m".into()), ..spec() };
        let p = effective_policy(&[&fixed, &auto], Origin::Run).unwrap();
        assert!(!p.idle_auto);
        assert_eq!(p.idle_duration, Some(Duration::from_secs(600)));
        assert!(effective_policy(&[&auto, &fixed], Origin::Run).unwrap().auto_idle());
        // DontDestroy keeps the instance whatever auto would choose.
        let keep = PolicySpec { termination_policy: Some(TerminationPolicy::DontDestroy), ..spec() };
        assert!(!effective_policy(&[&keep, &auto], Origin::Run).unwrap().auto_idle());
        // `auto` is not a max duration, nor a misspelt auto an idle duration.
        let bad = PolicySpec { max_duration: Some("auto".into()), ..spec() };
        let e = effective_policy(&[&bad], Origin::Run).unwrap_err();
        assert_eq!(e.field, "maxDuration");
        let bad = PolicySpec { idle_duration: Some("autoo".into()), ..spec() };
        let e = effective_policy(&[&bad], Origin::Run).unwrap_err();
        assert_eq!((e.field.as_str(), e.token.as_str()), ("idleDuration", "autoo"));
        assert!(e.to_string().contains("or `auto`"), "{e}");
    }

    #[test]
    fn retry_defaults_to_all_events_for_an_hour() {
        let r = PolicySpec { retry: Some(RetrySpec::default()), ..spec() };
        let p = effective_policy(&[&r], Origin::Run).unwrap();
        let retry = p.retry.unwrap();
        assert_eq!(retry.duration, DEFAULT_RETRY_DURATION);
        assert!(retry.retries_on(RetryEvent::NoCapacity));
        assert!(retry.retries_on(RetryEvent::Error));
        let r = PolicySpec {
            retry: Some(RetrySpec { on: Some(vec![RetryEvent::Interruption]), duration: Some("30m".into()) }),
            ..spec()
        };
        let retry = effective_policy(&[&r], Origin::Run).unwrap().retry.unwrap();
        assert_eq!(retry.duration, Duration::from_secs(1800));
        assert!(!retry.retries_on(RetryEvent::Error));
    }

    #[test]
    fn bad_values_name_the_field() {
        let bad = PolicySpec { idle_duration: Some("5 parsecs".into()), ..spec() };
        let e = effective_policy(&[&bad], Origin::Run).unwrap_err();
        assert_eq!(e.field, "idleDuration");
        let neg = PolicySpec { max_price: Some(-1.0), ..spec() };
        let e = effective_policy(&[&neg], Origin::Run).unwrap_err();
        assert_eq!(e.field, "maxPrice");
        assert_eq!(e.token, "-1");
    }

    #[test]
    fn spot_then_on_demand_falls_back_after_the_wait_or_the_interruptions() {
        let t = |s: &str| -> Timestamp { s.parse().unwrap() };
        let fb = PolicySpec {
            spot_policy: Some(SpotPolicy::SpotThenOnDemand),
            spot_fallback: Some(crate::api::policy::SpotFallbackSpec {
                after_interruptions: Some(2),
                after_waiting: Some("15m".into()),
            }),
            ..spec()
        };
        let p = effective_policy(&[&fb], Origin::Run).unwrap();
        let start = t("2026-01-01T00:00:00Z");
        let (spot, why) = p.for_launch(1, Some(start), t("2026-01-01T00:14:59Z"));
        assert_eq!((spot.spot_policy, why), (SpotPolicy::Spot, None));
        let retry = spot.retry.expect("spot looks for capacity until the wait ends");
        assert!(retry.retries_on(RetryEvent::NoCapacity) && retry.duration == Duration::from_secs(900));
        let (od, why) = p.for_launch(1, Some(start), t("2026-01-01T00:15:00Z"));
        assert_eq!(od.spot_policy, SpotPolicy::OnDemand);
        assert!(why.unwrap().contains("within 15m"));
        assert_eq!(od.retry, None, "on-demand keeps the run's own retry policy");
        let (od, why) = p.for_launch(2, None, start);
        assert_eq!(od.spot_policy, SpotPolicy::OnDemand);
        assert!(why.unwrap().contains("lost 2 spot machine(s)"));
        // Other spot policies are left alone.
        let auto = effective_policy(&[&PolicySpec { spot_policy: Some(SpotPolicy::Auto), ..spec() }], Origin::Run);
        let auto = auto.unwrap();
        assert_eq!(auto.for_launch(5, Some(start), t("2027-01-01T00:00:00Z")), (auto.clone(), None));
        let zero = PolicySpec {
            spot_fallback: Some(crate::api::policy::SpotFallbackSpec {
                after_interruptions: Some(0),
                after_waiting: None,
            }),
            ..spec()
        };
        let e = effective_policy(&[&zero], Origin::Run).unwrap_err();
        assert_eq!((e.field.as_str(), e.token.as_str()), ("spotFallback.afterInterruptions", "0"));
        let bad = PolicySpec {
            spot_fallback: Some(crate::api::policy::SpotFallbackSpec {
                after_interruptions: None,
                after_waiting: Some("soon".into()),
            }),
            ..spec()
        };
        let e = effective_policy(&[&bad], Origin::Run).unwrap_err();
        assert_eq!(e.field, "spotFallback.afterWaiting");
    }
}
