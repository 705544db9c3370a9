//! The scaling decision: a pure function of the scaling spec, the queue observations so far,
//! the current replica count and the clock. No I/O; the probe loop feeds it and acts on it.
//!
//! Rules (see the README, "Scaling"):
//! 1. Desired = ceil(messages / targetQueueLength), clamped to [minReplicas, maxReplicas], where
//!    messages is the queue's approximate count: visible **and** in-flight messages, so a role
//!    is never scaled below the work it is doing.
//! 2. From zero, a role wakes only when messages exceed `activationQueueLength`.
//! 3. To zero only after the queue has been empty, with nothing in flight, for
//!    `cooldownPeriod` (while it cools down one replica stays); that decision is immediate,
//!    the cooldown being its own stabilization.
//! 4. Scaling up takes the lowest recommendation of the `scaleUp` stabilization window (none
//!    by default: a new backlog is acted on at the first probe), scaling down the highest of
//!    the `scaleDown` window; each decision moves at most the step limit.
//! 5. A queue that cannot be read holds the current count (clamped to the range): no
//!    guessing, no wild swings; the caller reports the failure.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use cqrs_storage::QueueDepth;

use crate::crd::{Behavior, ScalingSpec};

#[cfg(test)]
mod tests;

/// What a probe of the queue returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The queue's depth.
    Depth(QueueDepth),
    /// The queue could not be read (missing, unreachable, forbidden), and why.
    Unreadable(String),
}

/// Which way a decision moves the replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// More replicas.
    Up,
    /// Fewer replicas.
    Down,
    /// No change.
    Hold,
}

/// One scaling decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Replicas the role should have.
    pub desired: i32,
    /// Compared with the current count.
    pub direction: Direction,
    /// Why, in words for status, events and logs.
    pub reason: String,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The scaler's memory between decisions: recent recommendations (for the stabilization
/// windows) and when the queue last had messages (for the cooldown).
#[derive(Clone, Debug)]
pub struct Scaler {
    recommendations: VecDeque<(Instant, i32)>,
    last_busy: Instant,
}

impl Scaler {
    /// A scaler that starts at `now`. It treats `now` as the last time the queue was busy, so a
    /// restarted operator waits one cooldown before scaling anything to zero.
    pub fn new(now: Instant) -> Self {
        Self {
            recommendations: VecDeque::new(),
            last_busy: now,
        }
    }

    /// Decides the replicas for a role that has `current` replicas, given the latest
    /// observation at `now`.
    pub fn decide(
        &mut self,
        spec: &ScalingSpec,
        current: i32,
        observation: &Observation,
        now: Instant,
    ) -> Decision {
        let (min, max) = (spec.min_replicas, spec.max_replicas.max(spec.min_replicas));
        let depth = match observation {
            Observation::Unreadable(why) => {
                let desired = current.clamp(min, max);
                return decision(
                    current,
                    desired,
                    format!("holding {desired} replica(s): the queue cannot be read ({why})"),
                );
            }
            Observation::Depth(depth) => depth,
        };
        let messages = depth.approximate;
        if messages > 0 {
            self.last_busy = now;
        }
        let idle_for = now.saturating_duration_since(self.last_busy);
        let cooldown = Duration::from_secs(u64::from(spec.cooldown_period));

        let (raw, why) = if messages == 0 {
            if current == 0 {
                (0, "the queue is empty".to_string())
            } else if idle_for >= cooldown {
                (
                    0,
                    format!(
                        "the queue has been empty with nothing in flight for {}s (cooldownPeriod {}s)",
                        idle_for.as_secs(),
                        spec.cooldown_period
                    ),
                )
            } else {
                (
                    1,
                    format!(
                        "the queue is empty; cooling down ({}s of {}s) before scaling to zero",
                        idle_for.as_secs(),
                        spec.cooldown_period
                    ),
                )
            }
        } else if current == 0 && messages <= u64::from(spec.activation_queue_length) {
            (
                0,
                format!(
                    "{messages} message(s) do not exceed activationQueueLength {}",
                    spec.activation_queue_length
                ),
            )
        } else {
            let wanted = messages.div_ceil(u64::from(spec.target_queue_length.max(1)));
            (
                i32::try_from(wanted).unwrap_or(i32::MAX),
                format!(
                    "{} / targetQueueLength {} = {wanted}",
                    describe(depth),
                    spec.target_queue_length
                ),
            )
        };
        let recommended = raw.clamp(min, max);
        let bounded = if recommended != raw {
            format!(" (bounded to [{min}, {max}])")
        } else {
            String::new()
        };
        self.remember(now, recommended, spec);

        // Rule 3: the cooldown is the stabilization for going to zero.
        if recommended == 0 && messages == 0 && current > 0 {
            return decision(current, 0, format!("scale to zero: {why}"));
        }
        let up = spec.up();
        let down = spec.down();
        let lowest_recent = self
            .extreme_since(now, up.stabilization_window_seconds, Iterator::min)
            .unwrap_or(recommended);
        let highest_recent = self
            .extreme_since(now, down.stabilization_window_seconds, Iterator::max)
            .unwrap_or(recommended);

        let (desired, reason) = if lowest_recent > current {
            let step = step_limit(up, current);
            let target = step.map_or(lowest_recent, |s| {
                lowest_recent.min(current.saturating_add(s))
            });
            let mut reason = format!("scale up {current}→{target}: {why}{bounded}");
            if lowest_recent != recommended {
                reason.push_str(&format!(
                    "; lowest recommendation of the last {}s is {lowest_recent}",
                    up.stabilization_window_seconds
                ));
            }
            if target < lowest_recent {
                reason.push_str(&format!("; step limited to +{}", target - current));
            }
            (target, reason)
        } else if highest_recent < current {
            let step = step_limit(down, current);
            let target = step.map_or(highest_recent, |s| {
                highest_recent.max(current.saturating_sub(s))
            });
            let mut reason = format!("scale down {current}→{target}: {why}{bounded}");
            if highest_recent != recommended {
                reason.push_str(&format!(
                    "; highest recommendation of the last {}s is {highest_recent}",
                    down.stabilization_window_seconds
                ));
            }
            if target > highest_recent {
                reason.push_str(&format!("; step limited to -{}", current - target));
            }
            (target, reason)
        } else if recommended != current {
            let window = if recommended > current {
                up.stabilization_window_seconds
            } else {
                down.stabilization_window_seconds
            };
            (
                current,
                format!(
                    "holding {current}: {why}{bounded}, but the {window}s stabilization window recommends {current}"
                ),
            )
        } else {
            (current, format!("steady at {current}: {why}{bounded}"))
        };
        decision(current, desired.clamp(min, max), reason)
    }

    fn remember(&mut self, now: Instant, recommended: i32, spec: &ScalingSpec) {
        self.recommendations.push_back((now, recommended));
        let keep = Duration::from_secs(u64::from(
            spec.up()
                .stabilization_window_seconds
                .max(spec.down().stabilization_window_seconds),
        ));
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > keep)
        {
            self.recommendations.pop_front();
        }
    }

    fn extreme_since(
        &self,
        now: Instant,
        window_seconds: u32,
        pick: fn(std::vec::IntoIter<i32>) -> Option<i32>,
    ) -> Option<i32> {
        let window = Duration::from_secs(u64::from(window_seconds));
        let values: Vec<i32> = self
            .recommendations
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= window)
            .map(|(_, r)| *r)
            .collect();
        pick(values.into_iter())
    }
}

fn decision(current: i32, desired: i32, reason: String) -> Decision {
    let direction = match desired.cmp(&current) {
        std::cmp::Ordering::Greater => Direction::Up,
        std::cmp::Ordering::Less => Direction::Down,
        std::cmp::Ordering::Equal => Direction::Hold,
    };
    Decision {
        desired,
        direction,
        reason,
    }
}

fn describe(depth: &QueueDepth) -> String {
    match depth.in_flight() {
        Some(0) => format!("{} message(s)", depth.approximate),
        Some(in_flight) => format!("{} message(s) ({in_flight} in flight)", depth.approximate),
        None => format!("~{} message(s)", depth.approximate),
    }
}

/// Most replicas one decision may add or remove: the larger of the two limits (at least 1),
/// or none when neither is set.
pub fn step_limit(behavior: Behavior, current: i32) -> Option<i32> {
    let by_count = behavior
        .max_step_replicas
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    let by_percent = behavior.max_step_percent.map(|p| {
        let step = (i64::from(current) * i64::from(p)).div_euclid(100)
            + i64::from((i64::from(current) * i64::from(p)) % 100 != 0);
        i32::try_from(step).unwrap_or(i32::MAX)
    });
    match (by_count, by_percent) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0)).max(1)),
    }
}

/// This replica's share of a role's `maxMessagesPerSecond`, as handed to each replica.
pub fn rate_share(max_messages_per_second: Option<u32>, replicas: i32) -> Option<f64> {
    max_messages_per_second.map(|total| f64::from(total) / f64::from(replicas.max(1)))
}
