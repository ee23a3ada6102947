//! The autoscaling policy: how many worker pods a pool should have, given its queue.
//!
//! Pure: no IO, no client, no Kubernetes types, no wall clock. The caller passes the
//! time of each evaluation as a monotonic [`Duration`] since any fixed origin (for
//! example `Instant::now() - operator_start`), the observed backlog and replica
//! counts, and the pool's [`AutoscaleSpec`]; an [`Autoscaler`] (one per pool) keeps the
//! memory the policy needs between evaluations.
//!
//! The semantics are those of the Kubernetes HorizontalPodAutoscaler (`autoscaling/v2`)
//! with an `AverageValue` target, plus KEDA-style activation and scale to zero:
//!
//! 1. `backlog` = entries not yet delivered to the group (lag) + entries delivered and
//!    not yet acknowledged (pending); dead letters are not part of it.
//! 2. Raw recommendation = `ceil(backlog / targetBacklogPerReplica)`, unless the backlog
//!    per *ready* replica is within the tolerance of the target (default 10%), in which
//!    case the recommendation is the current replica count. Pods that are not ready yet
//!    are not counted as capacity for that test.
//! 3. Stabilization: the lowest recommendation within the scale-up window and the
//!    highest within the scale-down window bound the result (HPA's algorithm).
//! 4. Rate policies (`Pods` / `Percent` per period, `selectPolicy` Max / Min /
//!    Disabled) limit the change against the replica count at the start of each
//!    policy's period, using the history of scale events.
//! 5. The result is clamped to `[minReplicas, maxReplicas]`.
//! 6. Zero: a pool at zero leaves it only when the backlog exceeds
//!    `activationBacklog` (and then to at least one pod, whatever the scale-up policy
//!    says); a pool with `minReplicas: 0` returns to zero only once the backlog has been
//!    zero for `scaleToZeroDelaySeconds` (and then directly, like KEDA's cooldown).
//! 7. While the queue cannot be read, the pool runs `fallbackReplicas` (clamped to the
//!    bounds) when set, and otherwise keeps its current size.
//!
//! Besides the policy, this module holds two helpers the planner needs on scale-in and
//! scale-out: [`pods_to_create`] (pods still terminating count against `maxReplicas`);
//! which pods leave on scale-in is the planner's [`victim_order`](crate::planner::victim_order).
//!
//! ```
//! use std::time::Duration;
//! use workpool_operator::autoscale::{
//!     AutoscaleSpec, Autoscaler, Backlog, Observation, ScaleDirection, ScalingReason,
//! };
//!
//! let spec = AutoscaleSpec::new(0, 50, 10); // minReplicas, maxReplicas, target per replica
//! let mut autoscaler = Autoscaler::new(); // one per pool, kept across polls
//! let decision = autoscaler.evaluate(
//!     &spec,
//!     &Observation {
//!         now: Duration::from_secs(0),
//!         backlog: Backlog::Known(250),
//!         current_replicas: 0,
//!         ready_replicas: 0,
//!     },
//! );
//! // 250 tasks call for 25 pods; leaving zero, HPA's default scale-up allows 4 now.
//! assert_eq!(decision.desired_replicas, 4);
//! assert_eq!(decision.reason, ScalingReason::RatePolicy);
//! assert_eq!(decision.direction(), ScaleDirection::Up);
//! assert_eq!(decision.backlog_recommendation, Some(25));
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// How a [`ScalingPolicy`] measures the change it allows in one period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// A number of pods per period.
    Pods,
    /// A percentage of the replica count at the start of the period.
    Percent,
}

/// One rate limit: at most `value` pods (or `value` percent) of change per
/// `period_seconds`, as in HPA's `HPAScalingPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalingPolicy {
    /// Whether `value` counts pods or percent.
    pub kind: PolicyKind,
    /// Pods, or percent, allowed to change per period.
    pub value: u32,
    /// Length of the period the change is counted over.
    pub period_seconds: u32,
}

impl ScalingPolicy {
    /// A `Pods` policy: `pods` per `period_seconds`.
    pub fn pods(pods: u32, period_seconds: u32) -> Self {
        Self {
            kind: PolicyKind::Pods,
            value: pods,
            period_seconds,
        }
    }

    /// A `Percent` policy: `percent` of the period's starting count per `period_seconds`.
    pub fn percent(percent: u32, period_seconds: u32) -> Self {
        Self {
            kind: PolicyKind::Percent,
            value: percent,
            period_seconds,
        }
    }
}

/// Which of several policies wins, as HPA's `selectPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SelectPolicy {
    /// The policy that allows the largest change (HPA's default).
    #[default]
    Max,
    /// The policy that allows the smallest change.
    Min,
    /// No change in this direction at all.
    Disabled,
}

/// The rules for one direction (HPA's `HPAScalingRules`), plus the tolerance.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingRules {
    /// Recommendations this far back are taken into account (0: none but the current).
    pub stabilization_window_seconds: u32,
    /// Rate limits; an empty list means no limit in this direction.
    pub policies: Vec<ScalingPolicy>,
    /// How the policies combine.
    pub select_policy: SelectPolicy,
    /// Relative deviation of backlog per ready replica from the target that causes no
    /// change in this direction (0.1 = 10%). Negative or non-finite values count as 0.
    pub tolerance: f64,
}

/// HPA's default tolerance: 10%.
pub const DEFAULT_TOLERANCE: f64 = 0.1;

impl ScalingRules {
    /// HPA's default scale-up rules: no stabilization, at most the larger of +100% and
    /// +4 pods every 15 seconds.
    pub fn default_scale_up() -> Self {
        Self {
            stabilization_window_seconds: 0,
            policies: vec![ScalingPolicy::percent(100, 15), ScalingPolicy::pods(4, 15)],
            select_policy: SelectPolicy::Max,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// HPA's default scale-down rules: a 300 second stabilization window, at most -100%
    /// every 15 seconds.
    pub fn default_scale_down() -> Self {
        Self {
            stabilization_window_seconds: 300,
            policies: vec![ScalingPolicy::percent(100, 15)],
            select_policy: SelectPolicy::Max,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    fn sanitized_tolerance(&self) -> f64 {
        if self.tolerance.is_finite() && self.tolerance > 0.0 {
            self.tolerance
        } else {
            0.0
        }
    }

    fn longest_period(&self) -> u32 {
        self.policies
            .iter()
            .map(|policy| policy.period_seconds)
            .max()
            .unwrap_or(0)
    }
}

/// Both directions' rules (HPA's `behavior`).
#[derive(Clone, Debug, PartialEq)]
pub struct Behavior {
    /// Rules when the pool grows.
    pub scale_up: ScalingRules,
    /// Rules when the pool shrinks.
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    /// HPA's documented defaults for both directions.
    fn default() -> Self {
        Self {
            scale_up: ScalingRules::default_scale_up(),
            scale_down: ScalingRules::default_scale_down(),
        }
    }
}

/// A pool's autoscaling settings, as the WorkPool spec gives them.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoscaleSpec {
    /// Lower bound (0 allows scale to zero).
    pub min_replicas: u32,
    /// Upper bound; a value below `min_replicas` counts as `min_replicas`.
    pub max_replicas: u32,
    /// Backlog (waiting + in-flight tasks) one replica should carry; 0 counts as 1.
    pub target_backlog_per_replica: u64,
    /// A pool at zero replicas leaves zero only when the backlog is above this.
    pub activation_backlog: u64,
    /// How long the backlog must have been zero before a pool with `min_replicas: 0`
    /// goes to zero.
    pub scale_to_zero_delay_seconds: u32,
    /// Replicas to run while the queue cannot be read; `None` keeps the current count.
    pub fallback_replicas: Option<u32>,
    /// Stabilization windows, rate policies and tolerances.
    pub behavior: Behavior,
}

impl AutoscaleSpec {
    /// A spec with the given bounds and target and every other field at its default
    /// (activation 0, zero delay 120 s, no fallback, HPA's default behavior).
    pub fn new(min_replicas: u32, max_replicas: u32, target_backlog_per_replica: u64) -> Self {
        Self {
            min_replicas,
            max_replicas,
            target_backlog_per_replica,
            activation_backlog: 0,
            scale_to_zero_delay_seconds: DEFAULT_SCALE_TO_ZERO_DELAY_SECONDS,
            fallback_replicas: None,
            behavior: Behavior::default(),
        }
    }

    fn max_bound(&self) -> u32 {
        self.max_replicas.max(self.min_replicas)
    }

    fn target(&self) -> u64 {
        self.target_backlog_per_replica.max(1)
    }
}

/// The default of `scaleToZeroDelaySeconds`.
pub const DEFAULT_SCALE_TO_ZERO_DELAY_SECONDS: u32 = 120;

/// What the operator could learn about the queue at this evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backlog {
    /// Lag + pending (dead letters excluded). A stream that does not exist yet is 0.
    Known(u64),
    /// Redis could not be read (the pool's `QueueReachable` condition is `False`).
    Unreadable,
}

/// The inputs of one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Monotonic time of this evaluation since an origin fixed for the pool's life.
    pub now: Duration,
    /// The queue's backlog, or that it could not be read.
    pub backlog: Backlog,
    /// The replica count the pool is currently sized for: the previous decision's
    /// `desired_replicas` (what `status.desiredReplicas` says), like HPA's
    /// `scale.spec.replicas`. Not the number of pods that exist at this instant: pods
    /// still being created or deleted would read as changes the policy did not make and
    /// upset its rate limits. For a pool seen for the first time, the live pod count.
    pub current_replicas: u32,
    /// How many of those pods are ready; pods not ready are not counted as capacity.
    pub ready_replicas: u32,
}

/// Why the desired replica count is what it is: the reason of the `Scaling` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScalingReason {
    /// The count follows the backlog; nothing limits it.
    DesiredWithinRange,
    /// The backlog per ready replica is within the tolerance of the target: no change.
    WithinTolerance,
    /// Held at `maxReplicas`.
    MaxReplicas,
    /// Held at `minReplicas`.
    MinReplicas,
    /// A stabilization window holds the count (recent recommendations disagree).
    StabilizationWindow,
    /// A rate policy limits how fast the count changes.
    RatePolicy,
    /// `selectPolicy: Disabled` forbids the change.
    ScalingDisabled,
    /// The queue cannot be read; running `fallbackReplicas`.
    Fallback,
    /// The queue cannot be read and no fallback is set; keeping the current count.
    QueueUnreadable,
    /// At zero, and the backlog is not above `activationBacklog`.
    Activation,
    /// The backlog is zero but has not been for `scaleToZeroDelaySeconds`: one replica stays.
    ScaleToZeroDelay,
    /// The backlog has been zero for `scaleToZeroDelaySeconds`: scaled to zero.
    ScaledToZero,
}

impl ScalingReason {
    /// The CamelCase word for a condition's `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DesiredWithinRange => "DesiredWithinRange",
            Self::WithinTolerance => "WithinTolerance",
            Self::MaxReplicas => "MaxReplicas",
            Self::MinReplicas => "MinReplicas",
            Self::StabilizationWindow => "StabilizationWindow",
            Self::RatePolicy => "RatePolicy",
            Self::ScalingDisabled => "ScalingDisabled",
            Self::Fallback => "Fallback",
            Self::QueueUnreadable => "QueueUnreadable",
            Self::Activation => "Activation",
            Self::ScaleToZeroDelay => "ScaleToZeroDelay",
            Self::ScaledToZero => "ScaledToZero",
        }
    }

    /// Whether something other than the backlog holds the count (the `Scaling`
    /// condition's "limited" sense).
    pub fn is_limited(self) -> bool {
        !matches!(
            self,
            Self::DesiredWithinRange | Self::WithinTolerance | Self::ScaledToZero
        )
    }
}

impl fmt::Display for ScalingReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The direction of a scale decision (for metrics and events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScaleDirection {
    /// More replicas than before.
    Up,
    /// Fewer replicas than before.
    Down,
    /// The same count.
    None,
}

impl ScaleDirection {
    /// `up`, `down` or `none`, for a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::None => "none",
        }
    }
}

/// The outcome of one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The replica count the pool should have now.
    pub desired_replicas: u32,
    /// What determined it.
    pub reason: ScalingReason,
    /// The count the backlog alone calls for (`ceil(backlog / target)`, before
    /// tolerance, stabilization, rate policies and bounds); `None` while unreadable.
    pub backlog_recommendation: Option<u32>,
    /// The count the pool had before this decision.
    pub previous_replicas: u32,
}

impl Decision {
    /// Whether the decision changes the replica count.
    pub fn direction(&self) -> ScaleDirection {
        match self.desired_replicas.cmp(&self.previous_replicas) {
            std::cmp::Ordering::Greater => ScaleDirection::Up,
            std::cmp::Ordering::Less => ScaleDirection::Down,
            std::cmp::Ordering::Equal => ScaleDirection::None,
        }
    }

    /// A sentence for the scale Event: the change, why, and what the backlog alone
    /// recommends.
    pub fn message(&self) -> String {
        let target = format!(
            "{} -> {} replicas",
            self.previous_replicas, self.desired_replicas
        );
        let why = self.reason_text();
        match self.backlog_recommendation {
            Some(recommendation) => {
                format!("{target}: {why} (backlog recommends {recommendation})")
            }
            None => format!("{target}: {why}"),
        }
    }

    /// Why the count is what it is, in words that do not change with the backlog (the
    /// `Scaling` condition's message: a status must not be rewritten on every poll).
    pub fn reason_text(&self) -> &'static str {
        match self.reason {
            ScalingReason::DesiredWithinRange => "the backlog calls for this count",
            ScalingReason::WithinTolerance => {
                "backlog per ready replica is within the tolerance of the target"
            }
            ScalingReason::MaxReplicas => "limited to maxReplicas",
            ScalingReason::MinReplicas => "held at minReplicas",
            ScalingReason::StabilizationWindow => {
                "recent recommendations within the stabilization window hold the count"
            }
            ScalingReason::RatePolicy => "a scaling policy limits the rate of change",
            ScalingReason::ScalingDisabled => "scaling in this direction is disabled",
            ScalingReason::Fallback => "the queue cannot be read; running fallbackReplicas",
            ScalingReason::QueueUnreadable => {
                "the queue cannot be read and no fallbackReplicas is set; keeping the count"
            }
            ScalingReason::Activation => {
                "at zero and the tasks waiting are not above activationBacklog"
            }
            ScalingReason::ScaleToZeroDelay => {
                "the backlog is zero but not yet for scaleToZeroDelaySeconds"
            }
            ScalingReason::ScaledToZero => {
                "at zero: the backlog has been zero for scaleToZeroDelaySeconds"
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TimedRecommendation {
    at: Duration,
    replicas: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ScaleEvent {
    at: Duration,
    direction: ScaleDirection,
    replicas_changed: u32,
}

/// One pool's policy and its memory: recent recommendations (for the stabilization
/// windows), recent scale events (for the rate policies) and when the backlog was last
/// non-zero (for the delay before zero). Create one per pool and call
/// [`Autoscaler::evaluate`] on every poll; the memory is bounded by the longest window
/// and period, not by the number of calls.
#[derive(Clone, Debug, Default)]
pub struct Autoscaler {
    recommendations: VecDeque<TimedRecommendation>,
    scale_events: VecDeque<ScaleEvent>,
    last_nonzero_backlog_at: Option<Duration>,
    initialized: bool,
}

impl Autoscaler {
    /// A policy with no memory yet. Its first evaluation records the current count as a
    /// recommendation (as HPA does), so an operator restart does not scale a pool down
    /// before a full stabilization window has passed, and starts the zero delay then.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides the desired replica count for `observation` under `spec` and records
    /// what the next evaluations need: the recommendation, and a scale event when the
    /// decision changes the count (the caller is expected to apply it).
    pub fn evaluate(&mut self, spec: &AutoscaleSpec, observation: &Observation) -> Decision {
        let now = observation.now;
        let current = observation.current_replicas;
        if !self.initialized {
            self.initialized = true;
            self.push_recommendation(now, current);
            self.last_nonzero_backlog_at = Some(now);
        }
        self.forget_before(now, spec);

        let (desired, reason, backlog_recommendation) = match observation.backlog {
            Backlog::Unreadable => {
                let (desired, reason) = match spec.fallback_replicas {
                    Some(fallback) => (
                        fallback.clamp(spec.min_replicas, spec.max_bound()),
                        ScalingReason::Fallback,
                    ),
                    None => (
                        current.clamp(spec.min_replicas, spec.max_bound()),
                        ScalingReason::QueueUnreadable,
                    ),
                };
                (desired, reason, None)
            }
            Backlog::Known(backlog) => {
                let recommendation = ceil_div_to_u32(backlog, spec.target());
                let (desired, reason) = self.decide_from_backlog(spec, observation, backlog);
                (desired, reason, Some(recommendation))
            }
        };

        if desired != current {
            self.scale_events.push_back(ScaleEvent {
                at: now,
                direction: if desired > current {
                    ScaleDirection::Up
                } else {
                    ScaleDirection::Down
                },
                replicas_changed: desired.abs_diff(current),
            });
        }
        Decision {
            desired_replicas: desired,
            reason,
            backlog_recommendation,
            previous_replicas: current,
        }
    }

    fn decide_from_backlog(
        &mut self,
        spec: &AutoscaleSpec,
        observation: &Observation,
        backlog: u64,
    ) -> (u32, ScalingReason) {
        let now = observation.now;
        let current = observation.current_replicas;
        let max = spec.max_bound();
        if backlog > 0 {
            self.last_nonzero_backlog_at = Some(now);
        }

        // Bounds first, as HPA does: a count outside [min, max] is brought inside at once.
        if current > max {
            return (max, ScalingReason::MaxReplicas);
        }
        if current < spec.min_replicas {
            return (spec.min_replicas, ScalingReason::MinReplicas);
        }

        if current == 0 {
            // At zero with nothing to do the pool is simply scaled to zero; with tasks
            // waiting that do not reach the activation threshold, activation holds it.
            if backlog == 0 {
                return (0, ScalingReason::ScaledToZero);
            }
            if backlog <= spec.activation_backlog {
                return (0, ScalingReason::Activation);
            }
        } else if spec.min_replicas == 0 && backlog == 0 && self.zero_delay_passed(now, spec) {
            // Like KEDA's cooldown: straight to zero, whatever the count; the next
            // activation starts from a clean history.
            self.recommendations.clear();
            return (0, ScalingReason::ScaledToZero);
        }

        let rules_up = &spec.behavior.scale_up;
        let rules_down = &spec.behavior.scale_down;
        let capacity = observation.ready_replicas.min(current);
        let raw = ceil_div_to_u32(backlog, spec.target());
        let within_tolerance = capacity > 0 && {
            let ratio = backlog as f64 / (spec.target() as f64 * f64::from(capacity));
            ratio >= 1.0 - rules_down.sanitized_tolerance()
                && ratio <= 1.0 + rules_up.sanitized_tolerance()
        };
        let proposal = if within_tolerance { current } else { raw };
        self.push_recommendation(now, proposal);

        // Stabilization (HPA's stabilizeRecommendationWithBehaviors).
        let up_window = rules_up.stabilization_window_seconds;
        let down_window = rules_down.stabilization_window_seconds;
        let mut up_recommendation = proposal;
        let mut down_recommendation = proposal;
        for recommendation in &self.recommendations {
            if in_window(now, up_window, recommendation.at) {
                up_recommendation = up_recommendation.min(recommendation.replicas);
            }
            if in_window(now, down_window, recommendation.at) {
                down_recommendation = down_recommendation.max(recommendation.replicas);
            }
        }
        let stabilized = current.max(up_recommendation).min(down_recommendation);

        // A pool with min 0 keeps one replica until the zero delay has passed.
        let floor = spec.min_replicas.max(1);
        let (mut desired, mut reason) = self.limit_rate(spec, current, stabilized, floor, max, now);
        if reason == ScalingReason::DesiredWithinRange {
            if stabilized != proposal {
                reason = ScalingReason::StabilizationWindow;
            } else if within_tolerance {
                reason = ScalingReason::WithinTolerance;
            }
        }
        if reason == ScalingReason::MinReplicas && spec.min_replicas == 0 && backlog == 0 {
            reason = ScalingReason::ScaleToZeroDelay;
        }
        if current == 0 && desired == 0 && max > 0 {
            // Activation always brings at least one pod, whatever the scale-up rules say.
            desired = 1;
            reason = ScalingReason::DesiredWithinRange;
        }
        (desired, reason)
    }

    /// HPA's convertDesiredReplicasWithBehaviorRate: the rate policies and the bounds.
    fn limit_rate(
        &self,
        spec: &AutoscaleSpec,
        current: u32,
        stabilized: u32,
        min: u32,
        max: u32,
        now: Duration,
    ) -> (u32, ScalingReason) {
        if stabilized > current {
            let rules = &spec.behavior.scale_up;
            let limit = if rules.select_policy == SelectPolicy::Disabled {
                current
            } else {
                self.scale_up_limit(rules, current, now).max(current)
            };
            let (allowed, reason) = if rules.select_policy == SelectPolicy::Disabled {
                (current.min(max), ScalingReason::ScalingDisabled)
            } else if max > limit {
                (limit, ScalingReason::RatePolicy)
            } else {
                (max, ScalingReason::MaxReplicas)
            };
            if stabilized > allowed {
                return (allowed, reason);
            }
        } else if stabilized < current {
            let rules = &spec.behavior.scale_down;
            let limit = if rules.select_policy == SelectPolicy::Disabled {
                current
            } else {
                self.scale_down_limit(rules, current, now).min(current)
            };
            let (allowed, reason) = if rules.select_policy == SelectPolicy::Disabled {
                (current.max(min), ScalingReason::ScalingDisabled)
            } else if min < limit {
                (limit, ScalingReason::RatePolicy)
            } else {
                (min, ScalingReason::MinReplicas)
            };
            if stabilized < allowed {
                return (allowed, reason);
            }
        }
        (stabilized, ScalingReason::DesiredWithinRange)
    }

    /// The highest count the scale-up policies allow now.
    fn scale_up_limit(&self, rules: &ScalingRules, current: u32, now: Duration) -> u32 {
        let mut result: Option<u32> = None;
        for policy in &rules.policies {
            let start = self.period_start_replicas(current, policy.period_seconds, now);
            let proposed = match policy.kind {
                PolicyKind::Pods => start.saturating_add(policy.value),
                PolicyKind::Percent => {
                    let grown = u64::from(start).saturating_mul(100 + u64::from(policy.value));
                    u32::try_from(grown.div_ceil(100)).unwrap_or(u32::MAX)
                }
            };
            result = Some(match (result, rules.select_policy) {
                (None, _) => proposed,
                (Some(best), SelectPolicy::Min) => best.min(proposed),
                (Some(best), _) => best.max(proposed),
            });
        }
        // No policy: no limit.
        result.unwrap_or(u32::MAX)
    }

    /// The lowest count the scale-down policies allow now.
    fn scale_down_limit(&self, rules: &ScalingRules, current: u32, now: Duration) -> u32 {
        let mut result: Option<u32> = None;
        for policy in &rules.policies {
            let start = self.period_start_replicas(current, policy.period_seconds, now);
            let proposed = match policy.kind {
                PolicyKind::Pods => start.saturating_sub(policy.value),
                PolicyKind::Percent => {
                    let kept = 100u64.saturating_sub(u64::from(policy.value));
                    // Truncated, as HPA's int32(float) conversion.
                    u32::try_from(u64::from(start) * kept / 100).unwrap_or(u32::MAX)
                }
            };
            result = Some(match (result, rules.select_policy) {
                (None, _) => proposed,
                (Some(best), SelectPolicy::Min) => best.max(proposed),
                (Some(best), _) => best.min(proposed),
            });
        }
        result.unwrap_or(0)
    }

    /// The replica count at the start of a period: the current count minus what was
    /// added within it plus what was removed within it.
    fn period_start_replicas(&self, current: u32, period_seconds: u32, now: Duration) -> u32 {
        let mut start = i64::from(current);
        let within_period = |event: &&ScaleEvent| in_window(now, period_seconds, event.at);
        for event in self.scale_events.iter().filter(within_period) {
            let changed = i64::from(event.replicas_changed);
            start = match event.direction {
                ScaleDirection::Up => start.saturating_sub(changed),
                ScaleDirection::Down => start.saturating_add(changed),
                ScaleDirection::None => start,
            };
        }
        u32::try_from(start.max(0)).unwrap_or(u32::MAX)
    }

    fn zero_delay_passed(&self, now: Duration, spec: &AutoscaleSpec) -> bool {
        let delay = Duration::from_secs(u64::from(spec.scale_to_zero_delay_seconds));
        match self.last_nonzero_backlog_at {
            Some(last) => now.saturating_sub(last) >= delay,
            None => true,
        }
    }

    fn push_recommendation(&mut self, at: Duration, replicas: u32) {
        // An earlier entry with the same value as a later one never decides a window
        // (the later one is inside every window the earlier one is), so runs of equal
        // recommendations keep only their newest entry.
        if let Some(last) = self.recommendations.back_mut()
            && last.replicas == replicas
        {
            last.at = last.at.max(at);
            return;
        }
        self.recommendations
            .push_back(TimedRecommendation { at, replicas });
    }

    fn forget_before(&mut self, now: Duration, spec: &AutoscaleSpec) {
        let behavior = &spec.behavior;
        let longest_window = behavior
            .scale_up
            .stabilization_window_seconds
            .max(behavior.scale_down.stabilization_window_seconds);
        while self
            .recommendations
            .front()
            .is_some_and(|recommendation| !in_window(now, longest_window, recommendation.at))
        {
            self.recommendations.pop_front();
        }
        let longest_period = behavior
            .scale_up
            .longest_period()
            .max(behavior.scale_down.longest_period());
        while self
            .scale_events
            .front()
            .is_some_and(|event| !in_window(now, longest_period, event.at))
        {
            self.scale_events.pop_front();
        }
    }

    /// How many recommendations and scale events the policy holds (for tests and
    /// diagnostics: it stays bounded however often `evaluate` is called).
    pub fn memory_len(&self) -> usize {
        self.recommendations.len() + self.scale_events.len()
    }
}

/// Whether something that happened `at` is inside a window of `seconds` ending at
/// `now` (a 0-second window holds nothing from the past).
fn in_window(now: Duration, seconds: u32, at: Duration) -> bool {
    seconds > 0 && at.saturating_add(Duration::from_secs(u64::from(seconds))) > now
}

fn ceil_div_to_u32(backlog: u64, target: u64) -> u32 {
    u32::try_from(backlog.div_ceil(target.max(1))).unwrap_or(u32::MAX)
}

/// The `controller.kubernetes.io/pod-deletion-cost` to give a pod holding
/// `pending_tasks` tasks: 0 when idle, else a log2 bucket of the count (1 -> 1, 2-3 -> 2,
/// 4-7 -> 3, ...), so busier pods cost more to delete (anything that deletes by that
/// annotation, a ReplicaSet or a person reading it, prefers idle ones) while the value
/// changes rarely (each change is a write).
pub fn pod_deletion_cost(pending_tasks: u64) -> i32 {
    (u64::BITS - pending_tasks.leading_zeros()) as i32
}

/// How many pods to create now so that the pool approaches `desired` live pods while
/// never having more than `max_replicas` pods at once: pods still terminating count
/// against the bound until they are gone.
///
/// `live` counts pods without a deletion timestamp; `terminating` those with one.
pub fn pods_to_create(desired: u32, live: u32, terminating: u32, max_replicas: u32) -> u32 {
    let wanted = desired.min(max_replicas).saturating_sub(live);
    let room = max_replicas.saturating_sub(live.saturating_add(terminating));
    wanted.min(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn observe(seconds: u64, backlog: u64, current: u32) -> Observation {
        Observation {
            now: at(seconds),
            backlog: Backlog::Known(backlog),
            current_replicas: current,
            ready_replicas: current,
        }
    }

    fn spec_without_windows(min: u32, max: u32, target: u64) -> AutoscaleSpec {
        let mut spec = AutoscaleSpec::new(min, max, target);
        spec.behavior.scale_down.stabilization_window_seconds = 0;
        spec
    }

    /// Evaluates and applies: returns the desired count, which becomes the next current.
    fn step(
        autoscaler: &mut Autoscaler,
        spec: &AutoscaleSpec,
        seconds: u64,
        backlog: u64,
        current: u32,
    ) -> Decision {
        autoscaler.evaluate(spec, &observe(seconds, backlog, current))
    }

    #[test]
    fn defaults_equal_hpa_documented_defaults() {
        let behavior = Behavior::default();
        assert_eq!(behavior.scale_up.stabilization_window_seconds, 0);
        assert_eq!(
            behavior.scale_up.policies,
            vec![ScalingPolicy::percent(100, 15), ScalingPolicy::pods(4, 15)]
        );
        assert_eq!(behavior.scale_up.select_policy, SelectPolicy::Max);
        assert_eq!(behavior.scale_down.stabilization_window_seconds, 300);
        assert_eq!(
            behavior.scale_down.policies,
            vec![ScalingPolicy::percent(100, 15)]
        );
        assert_eq!(behavior.scale_down.select_policy, SelectPolicy::Max);
        assert_eq!(behavior.scale_up.tolerance, 0.1);
        assert_eq!(behavior.scale_down.tolerance, 0.1);
    }

    #[test]
    fn desired_is_backlog_over_target_rounded_up() {
        let spec = spec_without_windows(1, 100, 10);
        let mut autoscaler = Autoscaler::new();
        let decision = step(&mut autoscaler, &spec, 0, 41, 2);
        assert_eq!(decision.desired_replicas, 5);
        assert_eq!(decision.reason, ScalingReason::DesiredWithinRange);
        assert_eq!(decision.backlog_recommendation, Some(5));
        assert_eq!(decision.direction(), ScaleDirection::Up);
    }

    /// HPA docs, "Algorithm details": a metric at twice the target doubles the replicas,
    /// at half the target halves them.
    #[test]
    fn hpa_docs_ratio_doubles_and_halves() {
        let spec = spec_without_windows(1, 100, 10);
        let mut autoscaler = Autoscaler::new();
        assert_eq!(step(&mut autoscaler, &spec, 0, 80, 4).desired_replicas, 8);
        let mut autoscaler = Autoscaler::new();
        assert_eq!(step(&mut autoscaler, &spec, 0, 20, 4).desired_replicas, 2);
    }

    /// HPA docs: no scaling while the ratio is within the 10% tolerance.
    #[test]
    fn hpa_docs_tolerance_skips_small_changes() {
        let spec = spec_without_windows(1, 100, 10);
        for backlog in [91, 100, 109, 110] {
            let mut autoscaler = Autoscaler::new();
            let decision = step(&mut autoscaler, &spec, 0, backlog, 10);
            assert_eq!(decision.desired_replicas, 10, "backlog {backlog}");
            assert_eq!(decision.reason, ScalingReason::WithinTolerance);
        }
        let mut autoscaler = Autoscaler::new();
        assert_eq!(
            step(&mut autoscaler, &spec, 0, 111, 10).desired_replicas,
            12
        );
        let mut autoscaler = Autoscaler::new();
        assert_eq!(step(&mut autoscaler, &spec, 0, 89, 10).desired_replicas, 9);
    }

    #[test]
    fn tolerance_is_settable_per_direction() {
        let mut spec = spec_without_windows(1, 100, 10);
        spec.behavior.scale_up.tolerance = 0.0;
        spec.behavior.scale_down.tolerance = 0.5;
        let mut autoscaler = Autoscaler::new();
        assert_eq!(
            step(&mut autoscaler, &spec, 0, 101, 10).desired_replicas,
            11
        );
        let mut autoscaler = Autoscaler::new();
        let decision = step(&mut autoscaler, &spec, 0, 51, 10);
        assert_eq!(decision.desired_replicas, 10);
        assert_eq!(decision.reason, ScalingReason::WithinTolerance);
        spec.behavior.scale_down.tolerance = f64::NAN;
        let mut autoscaler = Autoscaler::new();
        assert_eq!(step(&mut autoscaler, &spec, 0, 99, 10).desired_replicas, 10);
        let mut autoscaler = Autoscaler::new();
        assert_eq!(step(&mut autoscaler, &spec, 0, 89, 10).desired_replicas, 9);
    }

    /// HPA API docs, `tolerance`: with a target of 100Mi and tolerances of 5% down and 1%
    /// up, scaling happens below 95Mi or above 101Mi per replica.
    #[test]
    fn hpa_docs_per_direction_tolerance_example() {
        let mut spec = spec_without_windows(1, 1_000, 10);
        spec.behavior.scale_down.tolerance = 0.05;
        spec.behavior.scale_up.tolerance = 0.01;
        let desired = |backlog| {
            Autoscaler::new()
                .evaluate(&spec, &observe(0, backlog, 100))
                .desired_replicas
        };
        assert_eq!(desired(950), 100);
        assert_eq!(desired(940), 94);
        assert_eq!(desired(1_010), 100);
        assert_eq!(desired(1_020), 102);
    }

    #[test]
    fn unready_pods_are_not_capacity() {
        let spec = spec_without_windows(1, 100, 10);
        let mut autoscaler = Autoscaler::new();
        let all_ready = autoscaler.evaluate(&spec, &observe(0, 105, 10));
        assert_eq!(all_ready.desired_replicas, 10);
        assert_eq!(all_ready.reason, ScalingReason::WithinTolerance);
        let mut autoscaler = Autoscaler::new();
        let half_ready = autoscaler.evaluate(
            &spec,
            &Observation {
                ready_replicas: 5,
                ..observe(0, 105, 10)
            },
        );
        assert_eq!(half_ready.desired_replicas, 11);
    }

    /// HPA docs, "Default Behavior": scale up by the larger of 100% and 4 pods every 15 s.
    #[test]
    fn hpa_docs_default_scale_up_doubles_or_adds_four_per_period() {
        let spec = AutoscaleSpec::new(1, 100, 10);
        let mut autoscaler = Autoscaler::new();
        let mut current = 1;
        let mut counts = Vec::new();
        for seconds in (0..=90).step_by(15) {
            let decision = step(&mut autoscaler, &spec, seconds, 10_000, current);
            current = decision.desired_replicas;
            counts.push((current, decision.reason));
        }
        use ScalingReason::{MaxReplicas, RatePolicy};
        assert_eq!(
            counts,
            vec![
                (5, RatePolicy),
                (10, RatePolicy),
                (20, RatePolicy),
                (40, RatePolicy),
                (80, RatePolicy),
                (100, MaxReplicas),
                (100, MaxReplicas),
            ]
        );
    }

    #[test]
    fn scale_up_within_a_period_counts_earlier_events() {
        let spec = AutoscaleSpec::new(1, 100, 10);
        let mut autoscaler = Autoscaler::new();
        assert_eq!(
            step(&mut autoscaler, &spec, 0, 10_000, 1).desired_replicas,
            5
        );
        // 5 s later the period that started at 1 replica is still running: no more.
        let held = step(&mut autoscaler, &spec, 5, 10_000, 5);
        assert_eq!(held.desired_replicas, 5);
        assert_eq!(held.reason, ScalingReason::RatePolicy);
        assert_eq!(
            step(&mut autoscaler, &spec, 15, 10_000, 5).desired_replicas,
            10
        );
    }

    /// HPA docs, "Scaling Policies": with 4 pods/60 s and 10%/60 s, 80 replicas scaled
    /// down to 10 lose 8 first, then 8 from 72 (10% rounded up), and 4 at a time once
    /// below 40.
    #[test]
    fn hpa_docs_scale_down_policies_example() {
        let mut spec = spec_without_windows(1, 100, 10);
        spec.behavior.scale_down.policies =
            vec![ScalingPolicy::pods(4, 60), ScalingPolicy::percent(10, 60)];
        let mut autoscaler = Autoscaler::new();
        let mut current = 80;
        let mut counts = Vec::new();
        for minute in 0..16 {
            let decision = step(&mut autoscaler, &spec, minute * 60, 100, current);
            // Halfway through each period nothing more may go.
            let mid = step(
                &mut autoscaler,
                &spec,
                minute * 60 + 30,
                100,
                decision.desired_replicas,
            );
            assert_eq!(mid.desired_replicas, decision.desired_replicas);
            current = decision.desired_replicas;
            counts.push(current);
        }
        assert_eq!(
            counts,
            vec![
                72, 64, 57, 51, 45, 40, 36, 32, 28, 24, 20, 16, 12, 10, 10, 10
            ]
        );
    }

    /// HPA docs, "Example: limit scale down rate": 10% per minute, but never more than
    /// 5 pods per minute with `selectPolicy: Min`.
    #[test]
    fn hpa_docs_select_policy_min_takes_the_smaller_change() {
        let mut spec = spec_without_windows(1, 200, 10);
        spec.behavior.scale_down.policies =
            vec![ScalingPolicy::percent(10, 60), ScalingPolicy::pods(5, 60)];
        spec.behavior.scale_down.select_policy = SelectPolicy::Min;
        let mut autoscaler = Autoscaler::new();
        let decision = step(&mut autoscaler, &spec, 0, 10, 100);
        assert_eq!(decision.desired_replicas, 95);
        assert_eq!(decision.reason, ScalingReason::RatePolicy);
        let mut autoscaler = Autoscaler::new();
        assert_eq!(step(&mut autoscaler, &spec, 0, 10, 20).desired_replicas, 18);
    }

    /// HPA docs, "Example: disable scale down".
    #[test]
    fn hpa_docs_disabled_scale_down_never_removes_pods() {
        let mut spec = spec_without_windows(1, 100, 10);
        spec.behavior.scale_down.select_policy = SelectPolicy::Disabled;
        let mut autoscaler = Autoscaler::new();
        for minute in 0..10 {
            let decision = step(&mut autoscaler, &spec, minute * 60, 0, 10);
            assert_eq!(decision.desired_replicas, 10);
            assert_eq!(decision.reason, ScalingReason::ScalingDisabled);
        }
        // Scaling up still works.
        assert_eq!(
            step(&mut autoscaler, &spec, 700, 200, 10).desired_replicas,
            20
        );
    }

    #[test]
    fn disabled_scale_up_never_adds_pods() {
        let mut spec = spec_without_windows(1, 100, 10);
        spec.behavior.scale_up.select_policy = SelectPolicy::Disabled;
        let mut autoscaler = Autoscaler::new();
        let decision = step(&mut autoscaler, &spec, 0, 1_000, 3);
        assert_eq!(decision.desired_replicas, 3);
        assert_eq!(decision.reason, ScalingReason::ScalingDisabled);
    }

    /// HPA docs, "Stabilization window": on scale-down the highest recommendation of the
    /// last 300 s is used, so a brief dip does not remove pods.
    #[test]
    fn hpa_docs_scale_down_stabilization_uses_highest_recent_recommendation() {
        let spec = AutoscaleSpec::new(1, 100, 10);
        let mut autoscaler = Autoscaler::new();
        assert_eq!(
            step(&mut autoscaler, &spec, 0, 100, 10).desired_replicas,
            10
        );
        let dip = step(&mut autoscaler, &spec, 60, 50, 10);
        assert_eq!(dip.desired_replicas, 10);
        assert_eq!(dip.reason, ScalingReason::StabilizationWindow);
        assert_eq!(dip.backlog_recommendation, Some(5));
        let later = step(&mut autoscaler, &spec, 200, 70, 10);
        assert_eq!(later.desired_replicas, 10);
        // At 301 s the recommendation of 10 (t = 0) has left the window; 7 (t = 200) is the
        // highest left.
        assert_eq!(
            step(&mut autoscaler, &spec, 301, 50, 10).desired_replicas,
            7
        );
        assert_eq!(step(&mut autoscaler, &spec, 501, 50, 7).desired_replicas, 5);
    }

    #[test]
    fn scale_up_stabilization_uses_lowest_recent_recommendation() {
        let mut spec = spec_without_windows(1, 100, 10);
        spec.behavior.scale_up.stabilization_window_seconds = 60;
        let mut autoscaler = Autoscaler::new();
        assert_eq!(step(&mut autoscaler, &spec, 0, 20, 2).desired_replicas, 2);
        let spike = step(&mut autoscaler, &spec, 10, 100, 2);
        assert_eq!(spike.desired_replicas, 2);
        assert_eq!(spike.reason, ScalingReason::StabilizationWindow);
        // t = 0's recommendation leaves the window; the rate policy then allows 2 -> 6.
        let sustained = step(&mut autoscaler, &spec, 61, 100, 2);
        assert_eq!(sustained.desired_replicas, 6);
        assert_eq!(sustained.reason, ScalingReason::RatePolicy);
    }

    #[test]
    fn first_evaluation_remembers_current_count_so_a_restart_does_not_scale_down() {
        let spec = AutoscaleSpec::new(1, 100, 10);
        let mut autoscaler = Autoscaler::new();
        let decision = step(&mut autoscaler, &spec, 1_000, 0, 8);
        assert_eq!(decision.desired_replicas, 8);
        assert_eq!(decision.reason, ScalingReason::StabilizationWindow);
        assert_eq!(
            step(&mut autoscaler, &spec, 1_301, 0, 8).desired_replicas,
            1
        );
    }

    #[test]
    fn bounds_clamp_the_result() {
        let spec = spec_without_windows(2, 6, 10);
        let mut autoscaler = Autoscaler::new();
        let high = step(&mut autoscaler, &spec, 0, 1_000, 5);
        assert_eq!(
            (high.desired_replicas, high.reason),
            (6, ScalingReason::MaxReplicas)
        );
        let mut autoscaler = Autoscaler::new();
        let low = step(&mut autoscaler, &spec, 0, 0, 3);
        assert_eq!(
            (low.desired_replicas, low.reason),
            (2, ScalingReason::MinReplicas)
        );
        let mut autoscaler = Autoscaler::new();
        let above = step(&mut autoscaler, &spec, 0, 0, 9);
        assert_eq!(
            (above.desired_replicas, above.reason),
            (6, ScalingReason::MaxReplicas)
        );
        let mut autoscaler = Autoscaler::new();
        let below = step(&mut autoscaler, &spec, 0, 1_000, 0);
        assert_eq!(
            (below.desired_replicas, below.reason),
            (2, ScalingReason::MinReplicas)
        );
    }

    #[test]
    fn max_below_min_counts_as_min() {
        let spec = spec_without_windows(5, 2, 10);
        let mut autoscaler = Autoscaler::new();
        assert_eq!(
            step(&mut autoscaler, &spec, 0, 1_000, 5).desired_replicas,
            5
        );
    }

    #[test]
    fn zero_target_counts_as_one() {
        let spec = spec_without_windows(0, 100, 0);
        let mut autoscaler = Autoscaler::new();
        assert_eq!(step(&mut autoscaler, &spec, 0, 3, 3).desired_replicas, 3);
    }

    #[test]
    fn at_zero_the_backlog_must_exceed_activation() {
        let mut spec = spec_without_windows(0, 100, 10);
        spec.activation_backlog = 5;
        let mut autoscaler = Autoscaler::new();
        for backlog in [1, 5] {
            let decision = step(&mut autoscaler, &spec, 0, backlog, 0);
            assert_eq!(decision.desired_replicas, 0);
            assert_eq!(decision.reason, ScalingReason::Activation);
        }
        let idle = step(&mut autoscaler, &spec, 0, 0, 0);
        assert_eq!(
            (idle.desired_replicas, idle.reason),
            (0, ScalingReason::ScaledToZero)
        );
        let woken = step(&mut autoscaler, &spec, 1, 6, 0);
        assert_eq!(woken.desired_replicas, 1);
        assert_eq!(woken.direction(), ScaleDirection::Up);
    }

    #[test]
    fn a_pool_with_max_zero_never_activates() {
        let spec = spec_without_windows(0, 0, 10);
        let mut autoscaler = Autoscaler::new();
        let decision = step(&mut autoscaler, &spec, 0, 1_000, 0);
        assert_eq!(decision.desired_replicas, 0);
    }

    #[test]
    fn leaving_zero_follows_the_scale_up_policy() {
        let spec = AutoscaleSpec::new(0, 100, 10);
        let mut autoscaler = Autoscaler::new();
        let burst = step(&mut autoscaler, &spec, 0, 1_000, 0);
        assert_eq!(burst.desired_replicas, 4);
        assert_eq!(burst.reason, ScalingReason::RatePolicy);
    }

    #[test]
    fn leaving_zero_brings_one_pod_even_under_a_percent_only_policy() {
        let mut spec = AutoscaleSpec::new(0, 100, 10);
        spec.behavior.scale_up.policies = vec![ScalingPolicy::percent(100, 15)];
        let mut autoscaler = Autoscaler::new();
        assert_eq!(
            step(&mut autoscaler, &spec, 0, 1_000, 0).desired_replicas,
            1
        );
        spec.behavior.scale_up.select_policy = SelectPolicy::Disabled;
        let mut autoscaler = Autoscaler::new();
        assert_eq!(
            step(&mut autoscaler, &spec, 0, 1_000, 0).desired_replicas,
            1
        );
    }

    #[test]
    fn returns_to_zero_only_after_the_backlog_was_zero_for_the_delay() {
        let mut spec = spec_without_windows(0, 100, 10);
        spec.scale_to_zero_delay_seconds = 120;
        let mut autoscaler = Autoscaler::new();
        assert_eq!(step(&mut autoscaler, &spec, 0, 30, 3).desired_replicas, 3);
        let waiting = step(&mut autoscaler, &spec, 10, 0, 3);
        assert_eq!(waiting.desired_replicas, 1);
        assert_eq!(waiting.reason, ScalingReason::ScaleToZeroDelay);
        // A task at 60 s restarts the delay.
        assert_eq!(step(&mut autoscaler, &spec, 60, 1, 1).desired_replicas, 1);
        let still = step(&mut autoscaler, &spec, 179, 0, 1);
        assert_eq!(
            (still.desired_replicas, still.reason),
            (1, ScalingReason::ScaleToZeroDelay)
        );
        let zero = step(&mut autoscaler, &spec, 180, 0, 1);
        assert_eq!(
            (zero.desired_replicas, zero.reason),
            (0, ScalingReason::ScaledToZero)
        );
        assert!(!zero.reason.is_limited());
        let idle = step(&mut autoscaler, &spec, 200, 0, 0);
        assert_eq!(
            (idle.desired_replicas, idle.reason),
            (0, ScalingReason::ScaledToZero),
            "at zero with an empty queue: still scaled to zero"
        );
        // And back up at once when a task arrives.
        assert_eq!(step(&mut autoscaler, &spec, 201, 25, 0).desired_replicas, 3);
    }

    #[test]
    fn goes_to_zero_directly_from_many_replicas() {
        let spec = AutoscaleSpec::new(0, 100, 10);
        let mut autoscaler = Autoscaler::new();
        assert_eq!(
            step(&mut autoscaler, &spec, 0, 100, 10).desired_replicas,
            10
        );
        // Within the scale-down window the pool keeps its size...
        assert_eq!(step(&mut autoscaler, &spec, 60, 0, 10).desired_replicas, 10);
        // ...and once the backlog has been zero for the delay it goes to zero.
        let zero = step(&mut autoscaler, &spec, 180, 0, 10);
        assert_eq!(
            (zero.desired_replicas, zero.reason),
            (0, ScalingReason::ScaledToZero)
        );
    }

    #[test]
    fn nonzero_backlog_below_activation_keeps_a_running_pool() {
        let mut spec = spec_without_windows(0, 100, 10);
        spec.activation_backlog = 10;
        let mut autoscaler = Autoscaler::new();
        for minute in 0..20 {
            assert_eq!(
                step(&mut autoscaler, &spec, minute * 60, 3, 1).desired_replicas,
                1
            );
        }
    }

    #[test]
    fn min_above_zero_never_goes_to_zero() {
        let spec = spec_without_windows(2, 100, 10);
        let mut autoscaler = Autoscaler::new();
        for minute in 0..20 {
            let decision = step(&mut autoscaler, &spec, minute * 60, 0, 2);
            assert_eq!(decision.desired_replicas, 2);
        }
    }

    #[test]
    fn fallback_replicas_while_the_queue_is_unreadable() {
        let mut spec = AutoscaleSpec::new(0, 10, 10);
        spec.fallback_replicas = Some(2);
        let unreadable = |current| Observation {
            now: at(0),
            backlog: Backlog::Unreadable,
            current_replicas: current,
            ready_replicas: current,
        };
        for current in [0, 2, 7] {
            let decision = Autoscaler::new().evaluate(&spec, &unreadable(current));
            assert_eq!(decision.desired_replicas, 2);
            assert_eq!(decision.reason, ScalingReason::Fallback);
            assert_eq!(decision.backlog_recommendation, None);
        }
        spec.fallback_replicas = Some(50);
        assert_eq!(
            Autoscaler::new()
                .evaluate(&spec, &unreadable(3))
                .desired_replicas,
            10
        );
        spec.fallback_replicas = None;
        let held = Autoscaler::new().evaluate(&spec, &unreadable(7));
        assert_eq!(
            (held.desired_replicas, held.reason),
            (7, ScalingReason::QueueUnreadable)
        );
        assert!(held.message().contains("cannot be read"));
    }

    #[test]
    fn an_outage_does_not_count_as_zero_backlog() {
        let mut spec = spec_without_windows(0, 10, 10);
        spec.scale_to_zero_delay_seconds = 60;
        let mut autoscaler = Autoscaler::new();
        assert_eq!(step(&mut autoscaler, &spec, 0, 30, 3).desired_replicas, 3);
        for seconds in 1..200 {
            let decision = autoscaler.evaluate(
                &spec,
                &Observation {
                    backlog: Backlog::Unreadable,
                    ..observe(seconds, 0, 3)
                },
            );
            assert_eq!(decision.desired_replicas, 3);
        }
        // Back, with an empty queue: the delay counts from the last known non-zero
        // backlog, so the pool may go to zero now.
        assert_eq!(step(&mut autoscaler, &spec, 200, 0, 3).desired_replicas, 0);
    }

    #[test]
    fn memory_stays_bounded() {
        let spec = AutoscaleSpec::new(0, 1_000, 1);
        let mut autoscaler = Autoscaler::new();
        let mut current = 0;
        for tenth in 0..50_000u64 {
            let backlog = (tenth * 7919) % 613;
            let decision = autoscaler.evaluate(
                &spec,
                &Observation {
                    now: Duration::from_millis(tenth * 100),
                    ..observe(0, backlog, current)
                },
            );
            current = decision.desired_replicas;
        }
        // One entry per evaluation within the longest window (300 s = 3000 evaluations)
        // and period, at most.
        assert!(
            autoscaler.memory_len() <= 3_200,
            "{}",
            autoscaler.memory_len()
        );
    }

    #[test]
    fn reasons_have_condition_words_and_limits() {
        assert_eq!(ScalingReason::RatePolicy.as_str(), "RatePolicy");
        assert_eq!(ScalingReason::MaxReplicas.to_string(), "MaxReplicas");
        assert!(ScalingReason::StabilizationWindow.is_limited());
        assert!(!ScalingReason::DesiredWithinRange.is_limited());
        assert_eq!(ScaleDirection::Down.as_str(), "down");
        let decision = Decision {
            desired_replicas: 4,
            reason: ScalingReason::RatePolicy,
            backlog_recommendation: Some(9),
            previous_replicas: 1,
        };
        assert_eq!(
            decision.message(),
            "1 -> 4 replicas: a scaling policy limits the rate of change (backlog recommends 9)"
        );
    }

    #[test]
    fn deletion_cost_grows_with_pending_tasks() {
        let costs: Vec<i32> = [0, 1, 2, 3, 4, 7, 8, 1000]
            .into_iter()
            .map(pod_deletion_cost)
            .collect();
        assert_eq!(costs, [0, 1, 2, 2, 3, 3, 4, 10]);
        assert_eq!(pod_deletion_cost(u64::MAX), 64);
    }

    #[test]
    fn terminating_pods_count_against_max_replicas() {
        assert_eq!(pods_to_create(10, 5, 3, 10), 2);
        assert_eq!(pods_to_create(10, 5, 0, 10), 5);
        assert_eq!(pods_to_create(10, 5, 6, 10), 0);
        assert_eq!(pods_to_create(20, 5, 0, 10), 5);
        assert_eq!(pods_to_create(3, 5, 0, 10), 0);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_rules() -> impl Strategy<Value = ScalingRules> {
            let policy = (any::<bool>(), 0u32..300, 0u32..120).prop_map(|(pods, value, period)| {
                if pods {
                    ScalingPolicy::pods(value, period)
                } else {
                    ScalingPolicy::percent(value, period)
                }
            });
            (
                0u32..400,
                prop::collection::vec(policy, 0..4),
                prop_oneof![
                    Just(SelectPolicy::Max),
                    Just(SelectPolicy::Min),
                    Just(SelectPolicy::Disabled)
                ],
                prop_oneof![
                    Just(0.1),
                    0.0f64..1.0,
                    Just(f64::NAN),
                    Just(-1.0),
                    Just(f64::INFINITY)
                ],
            )
                .prop_map(|(window, policies, select_policy, tolerance)| {
                    ScalingRules {
                        stabilization_window_seconds: window,
                        policies,
                        select_policy,
                        tolerance,
                    }
                })
        }

        fn any_spec() -> impl Strategy<Value = AutoscaleSpec> {
            (
                0u32..20,
                0u32..200,
                0u64..50,
                0u64..20,
                0u32..300,
                prop::option::of(0u32..300),
                any_rules(),
                any_rules(),
            )
                .prop_map(
                    |(min, max, target, activation, delay, fallback, scale_up, scale_down)| {
                        AutoscaleSpec {
                            min_replicas: min,
                            max_replicas: max,
                            target_backlog_per_replica: target,
                            activation_backlog: activation,
                            scale_to_zero_delay_seconds: delay,
                            fallback_replicas: fallback,
                            behavior: Behavior {
                                scale_up,
                                scale_down,
                            },
                        }
                    },
                )
        }

        /// (seconds since the previous evaluation, backlog or unreadable, ready fraction)
        fn any_trace() -> impl Strategy<Value = Vec<(u64, Option<u64>, u8)>> {
            prop::collection::vec(
                (
                    0u64..90,
                    prop::option::weighted(0.9, 0u64..5_000),
                    0u8..=100,
                ),
                1..60,
            )
        }

        fn evaluate_trace(
            spec: &AutoscaleSpec,
            trace: &[(u64, Option<u64>, u8)],
            initial: u32,
            mut check: impl FnMut(&Observation, &Decision),
        ) {
            let mut autoscaler = Autoscaler::new();
            let mut now = 0u64;
            let mut current = initial;
            for &(gap, backlog, ready_percent) in trace {
                now += gap;
                let observation = Observation {
                    now: Duration::from_secs(now),
                    backlog: backlog.map_or(Backlog::Unreadable, Backlog::Known),
                    current_replicas: current,
                    ready_replicas: u32::try_from(
                        u64::from(current) * u64::from(ready_percent) / 100,
                    )
                    .unwrap_or(current),
                };
                let decision = autoscaler.evaluate(spec, &observation);
                check(&observation, &decision);
                current = decision.desired_replicas;
            }
        }

        proptest! {
            #[test]
            fn desired_always_within_bounds(spec in any_spec(), trace in any_trace(), initial in 0u32..300) {
                evaluate_trace(&spec, &trace, initial, |_, decision| {
                    let max = spec.max_replicas.max(spec.min_replicas);
                    assert!(decision.desired_replicas <= max, "{decision:?}");
                    assert!(decision.desired_replicas >= spec.min_replicas, "{decision:?}");
                });
            }

            #[test]
            fn never_moves_against_the_backlog(spec in any_spec(), trace in any_trace(), initial in 0u32..300) {
                let max = spec.max_replicas.max(spec.min_replicas);
                evaluate_trace(&spec, &trace, initial, |observation, decision| {
                    let current = observation.current_replicas;
                    let (Some(raw), true) = (
                        decision.backlog_recommendation,
                        (spec.min_replicas..=max).contains(&current),
                    ) else {
                        return;
                    };
                    let desired = decision.desired_replicas;
                    if desired > current {
                        assert!(raw > current, "up to {desired} from {current}, backlog says {raw}");
                    }
                    if desired < current {
                        assert!(raw < current, "down to {desired} from {current}, backlog says {raw}");
                    }
                    assert!(desired <= raw.max(current).max(1), "{decision:?}");
                });
            }

            #[test]
            fn default_scale_up_adds_at_most_the_larger_of_double_and_four_per_fifteen_seconds(
                trace in prop::collection::vec((1u64..20, 0u64..5_000), 1..60),
            ) {
                let spec = AutoscaleSpec::new(0, 1_000, 3);
                let mut autoscaler = Autoscaler::new();
                let mut history: Vec<(u64, u32)> = Vec::new();
                let mut now = 0;
                let mut current = 0;
                for (gap, backlog) in trace {
                    now += gap;
                    let decision = autoscaler.evaluate(&spec, &observe(now, backlog, current));
                    current = decision.desired_replicas;
                    history.push((now, current));
                    // The count 15 s ago (the latest one at or before now - 15).
                    let start = history
                        .iter()
                        .rev()
                        .find(|(when, _)| *when + 15 <= now)
                        .map_or(0, |(_, count)| *count);
                    let lowest_in_period = history
                        .iter()
                        .filter(|(when, _)| *when + 15 > now)
                        .map(|(_, count)| *count)
                        .min()
                        .unwrap_or(0)
                        .min(start);
                    let allowed = (lowest_in_period * 2).max(lowest_in_period + 4);
                    prop_assert!(current <= allowed, "at {now}: {current} > {allowed} ({history:?})");
                }
            }

            #[test]
            fn extreme_values_never_panic(
                min in any::<u32>(),
                max in any::<u32>(),
                target in any::<u64>(),
                activation in any::<u64>(),
                delay in any::<u32>(),
                fallback in any::<Option<u32>>(),
                policy_value in any::<u32>(),
                period in any::<u32>(),
                window in any::<u32>(),
                steps in prop::collection::vec((any::<u64>(), any::<Option<u64>>(), any::<u32>(), any::<u32>()), 1..20),
            ) {
                let rules = ScalingRules {
                    stabilization_window_seconds: window,
                    policies: vec![ScalingPolicy::percent(policy_value, period), ScalingPolicy::pods(policy_value, period)],
                    select_policy: SelectPolicy::Max,
                    tolerance: f64::MAX,
                };
                let spec = AutoscaleSpec {
                    min_replicas: min,
                    max_replicas: max,
                    target_backlog_per_replica: target,
                    activation_backlog: activation,
                    scale_to_zero_delay_seconds: delay,
                    fallback_replicas: fallback,
                    behavior: Behavior { scale_up: rules.clone(), scale_down: rules },
                };
                let mut autoscaler = Autoscaler::new();
                for (nanos, backlog, current, ready) in steps {
                    let decision = autoscaler.evaluate(&spec, &Observation {
                        now: Duration::from_nanos(nanos),
                        backlog: backlog.map_or(Backlog::Unreadable, Backlog::Known),
                        current_replicas: current,
                        ready_replicas: ready,
                    });
                    prop_assert!(decision.desired_replicas <= max.max(min));
                    prop_assert!(!decision.message().is_empty());
                }
            }

            /// HPA's stabilization: a scale-down never goes below the highest
            /// recommendation within the scale-down window, a scale-up never above the
            /// lowest within the scale-up window.
            #[test]
            fn stabilization_windows_bound_every_change(
                down_window in 0u32..200,
                up_window in 0u32..200,
                trace in prop::collection::vec((1u64..60, 0u64..400), 1..60),
                initial in 1u32..40,
            ) {
                let mut spec = AutoscaleSpec::new(1, 40, 10);
                spec.behavior.scale_down.stabilization_window_seconds = down_window;
                spec.behavior.scale_up.stabilization_window_seconds = up_window;
                // No tolerance: the recommendation recorded is the backlog's.
                spec.behavior.scale_down.tolerance = 0.0;
                spec.behavior.scale_up.tolerance = 0.0;
                let mut autoscaler = Autoscaler::new();
                // The first evaluation also remembers the current count.
                let mut recorded: Vec<(u64, u32)> = Vec::new();
                let mut now = 0;
                let mut current = initial;
                for (gap, backlog) in trace {
                    now += gap;
                    if recorded.is_empty() {
                        recorded.push((now, initial));
                    }
                    let decision = autoscaler.evaluate(&spec, &observe(now, backlog, current));
                    let raw = decision.backlog_recommendation.unwrap_or(0);
                    recorded.push((now, raw));
                    let inside = |window: u32| {
                        recorded
                            .iter()
                            .filter(move |(at, _)| window > 0 && at + u64::from(window) > now)
                            .map(|(_, count)| *count)
                            .chain([raw])
                    };
                    let desired = decision.desired_replicas;
                    if desired < current {
                        let highest = inside(down_window).max().unwrap_or(0).max(1);
                        prop_assert!(desired >= highest.min(current), "down to {desired}, window had {highest}");
                    }
                    if desired > current {
                        let lowest = inside(up_window).min().unwrap_or(0).min(40);
                        prop_assert!(desired <= lowest.max(current), "up to {desired}, window had {lowest}");
                    }
                    current = desired;
                }
            }

            #[test]
            fn pod_count_never_exceeds_max_with_terminating_pods(
                desired in 0u32..100, live in 0u32..100, terminating in 0u32..100, max in 0u32..100,
            ) {
                let created = pods_to_create(desired, live, terminating, max);
                if live + terminating <= max {
                    prop_assert!(live + terminating + created <= max);
                } else {
                    prop_assert_eq!(created, 0);
                }
                prop_assert!(live + created <= desired.max(live));
                if live + terminating + desired.saturating_sub(live) <= max && desired <= max {
                    prop_assert_eq!(live + created, desired.max(live));
                }
            }
        }
    }
}
