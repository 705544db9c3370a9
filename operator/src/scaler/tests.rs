//! Table-driven tests: each scenario is a sequence of (seconds since start, current replicas,
//! observation) with the replicas the scaler must ask for.

use std::time::{Duration, Instant};

use cqrs_storage::QueueDepth;

use super::*;
use crate::crd::{ScalingBehavior, ScalingSpec};

/// A queue with `n` visible messages and nothing in flight.
fn visible(n: u64) -> Observation {
    Observation::Depth(QueueDepth {
        approximate: n,
        visible: (n <= 32).then_some(n),
    })
}

/// A queue whose messages are all received (invisible), being worked on.
fn in_flight(n: u64) -> Observation {
    Observation::Depth(QueueDepth {
        approximate: n,
        visible: Some(0),
    })
}

fn unreadable() -> Observation {
    Observation::Unreadable("QueueNotFound (404)".into())
}

fn spec() -> ScalingSpec {
    ScalingSpec {
        min_replicas: 0,
        max_replicas: 10,
        target_queue_length: 5,
        activation_queue_length: 0,
        polling_interval: 5,
        cooldown_period: 60,
        // No windows or step limits unless a scenario asks for them.
        scale_up: ScalingBehavior {
            stabilization_window_seconds: Some(0),
            max_step_replicas: Some(1000),
            max_step_percent: None,
        },
        scale_down: ScalingBehavior {
            stabilization_window_seconds: Some(0),
            max_step_replicas: None,
            max_step_percent: None,
        },
    }
}

type Step = (u64, i32, Observation, i32);

/// Runs a scenario; `current` in each step is what the deployment has at that moment.
fn run(spec: &ScalingSpec, steps: &[Step]) {
    let t0 = Instant::now();
    let mut scaler = Scaler::new(t0);
    for (i, (at, current, observation, expected)) in steps.iter().enumerate() {
        let decision = scaler.decide(spec, *current, observation, t0 + Duration::from_secs(*at));
        assert_eq!(
            decision.desired, *expected,
            "step {i} (t={at}s, current={current}, {observation:?}): {}",
            decision.reason
        );
        assert!(!decision.reason.is_empty());
    }
}

#[test]
fn desired_is_the_ceiling_of_messages_over_target() {
    run(
        &spec(),
        &[
            (0, 0, visible(1), 1),
            (5, 1, visible(11), 3),
            (10, 3, visible(50), 10),
        ],
    );
}

#[test]
fn desired_is_clamped_to_min_and_max() {
    let s = ScalingSpec {
        min_replicas: 2,
        max_replicas: 4,
        ..spec()
    };
    run(
        &s,
        &[
            (0, 0, visible(0), 2),
            (5, 2, visible(1000), 4),
            (10, 4, visible(1), 2),
        ],
    );
}

#[test]
fn reacts_to_a_new_backlog_at_the_first_probe() {
    let s = ScalingSpec {
        scale_up: ScalingBehavior::default(),
        ..spec()
    };
    // Defaults: no up window; step 4 or +100%.
    run(
        &s,
        &[
            (0, 0, visible(0), 0),
            (5, 0, visible(200), 4),
            (10, 4, visible(200), 8),
            (15, 8, visible(200), 10),
        ],
    );
}

#[test]
fn wakes_from_zero_only_above_the_activation_threshold() {
    let s = ScalingSpec {
        activation_queue_length: 10,
        ..spec()
    };
    run(&s, &[(0, 0, visible(10), 0), (5, 0, visible(11), 3)]);
    // Once awake, the threshold no longer matters.
    run(&s, &[(0, 0, visible(11), 3), (5, 3, visible(4), 1)]);
}

#[test]
fn scales_to_zero_only_after_cooldown() {
    run(
        &spec(),
        &[
            (0, 0, visible(20), 4), // last probe that saw messages: the cooldown counts from here
            (5, 4, visible(0), 1),  // empty: keep one while cooling down
            (30, 1, visible(0), 1),
            (59, 1, visible(0), 1), // 59 s since messages were seen
            (60, 1, visible(0), 0), // 60 s: to zero
            (65, 0, visible(0), 0),
        ],
    );
}

#[test]
fn new_messages_restart_the_cooldown() {
    run(
        &spec(),
        &[
            (0, 1, visible(2), 1),
            (50, 1, visible(0), 1),
            (100, 1, visible(1), 1),
            (150, 1, visible(0), 1),
            (160, 1, visible(0), 0),
        ],
    );
}

#[test]
fn never_scales_to_zero_while_messages_are_in_flight() {
    run(
        &spec(),
        &[
            (0, 2, in_flight(3), 1),
            (100, 1, in_flight(3), 1), // long-running work: nothing visible, but not idle
            (200, 1, in_flight(1), 1),
            (230, 1, visible(0), 1), // done; the cooldown starts now
            (290, 1, visible(0), 0),
        ],
    );
}

#[test]
fn an_unreadable_queue_holds_the_current_count() {
    run(
        &spec(),
        &[
            (0, 3, unreadable(), 3),
            (5, 0, unreadable(), 0),
            (10, 7, unreadable(), 7),
        ],
    );
    // ...but still respects the range if the spec changed under it.
    let s = ScalingSpec {
        min_replicas: 1,
        max_replicas: 5,
        ..spec()
    };
    run(&s, &[(0, 0, unreadable(), 1), (5, 9, unreadable(), 5)]);
}

#[test]
fn an_unreadable_queue_does_not_count_as_idle_for_the_cooldown() {
    // 55 s idle, then 50 s unreadable: the scaler still counts from the last empty reading;
    // it reaches zero at the first readable empty probe after the cooldown, never while blind.
    run(
        &spec(),
        &[
            (0, 1, visible(1), 1),
            (5, 1, visible(0), 1),
            (30, 1, unreadable(), 1),
            (90, 1, unreadable(), 1),
            (95, 1, visible(0), 0),
        ],
    );
}

#[test]
fn a_restarted_scaler_waits_one_cooldown_before_zero() {
    run(
        &spec(),
        &[
            (0, 3, visible(0), 1),
            (59, 1, visible(0), 1),
            (60, 1, visible(0), 0),
        ],
    );
}

#[test]
fn scale_up_steps_are_limited_by_replicas_or_percent_whichever_allows_more() {
    let s = ScalingSpec {
        max_replicas: 100,
        scale_up: ScalingBehavior {
            stabilization_window_seconds: Some(0),
            max_step_replicas: Some(2),
            max_step_percent: Some(50),
        },
        ..spec()
    };
    // From 0: 50% of 0 is 0, 2 replicas allowed. From 10: 50% = 5 beats 2.
    run(
        &s,
        &[
            (0, 0, visible(500), 2),
            (5, 2, visible(500), 4),
            (10, 10, visible(500), 15),
        ],
    );
}

#[test]
fn scale_down_steps_are_limited_too() {
    let s = ScalingSpec {
        scale_down: ScalingBehavior {
            stabilization_window_seconds: Some(0),
            max_step_replicas: Some(1),
            max_step_percent: None,
        },
        ..spec()
    };
    run(&s, &[(0, 8, visible(5), 7), (5, 7, visible(5), 6)]);
}

#[test]
fn scale_down_uses_the_highest_recommendation_in_its_window() {
    let s = ScalingSpec {
        scale_down: ScalingBehavior {
            stabilization_window_seconds: Some(30),
            ..spec().scale_down
        },
        ..spec()
    };
    run(
        &s,
        &[
            (0, 0, visible(40), 8),
            (5, 8, visible(10), 8), // recommends 2, but 8 was recommended 5 s ago
            (20, 8, visible(10), 8),
            (36, 8, visible(10), 2), // the 8 left the 30 s window
        ],
    );
}

#[test]
fn a_brief_dip_does_not_scale_down_within_the_default_window() {
    let s = ScalingSpec {
        scale_down: ScalingBehavior::default(),
        ..spec()
    };
    run(
        &s,
        &[
            (0, 0, visible(30), 6),
            (5, 6, visible(5), 6),
            (10, 6, visible(30), 6),
            (71, 6, visible(5), 1),
        ],
    );
}

#[test]
fn scale_up_uses_the_lowest_recommendation_in_its_window() {
    let s = ScalingSpec {
        scale_up: ScalingBehavior {
            stabilization_window_seconds: Some(10),
            ..spec().scale_up
        },
        ..spec()
    };
    run(
        &s,
        &[
            (0, 1, visible(5), 1),
            (5, 1, visible(50), 1),
            (11, 1, visible(50), 10),
        ],
    );
}

#[test]
fn a_spike_to_zero_replicas_respects_min_replicas() {
    let s = ScalingSpec {
        min_replicas: 1,
        cooldown_period: 0,
        ..spec()
    };
    run(&s, &[(0, 3, visible(0), 1), (5, 1, visible(0), 1)]);
}

#[test]
fn step_limit_is_none_without_limits_and_at_least_one_otherwise() {
    let none = Behavior {
        stabilization_window_seconds: 0,
        max_step_replicas: None,
        max_step_percent: None,
    };
    assert_eq!(step_limit(none, 5), None);
    let pct = Behavior {
        max_step_percent: Some(10),
        ..none
    };
    assert_eq!(step_limit(pct, 0), Some(1));
    assert_eq!(step_limit(pct, 25), Some(3));
}

#[test]
fn rate_share_divides_the_total_among_replicas() {
    assert_eq!(rate_share(None, 3), None);
    assert_eq!(rate_share(Some(100), 4), Some(25.0));
    assert_eq!(rate_share(Some(100), 0), Some(100.0));
}

#[test]
fn reasons_explain_the_decision() {
    let t0 = Instant::now();
    let mut scaler = Scaler::new(t0);
    let d = scaler.decide(
        &spec(),
        0,
        &Observation::Depth(QueueDepth {
            approximate: 12,
            visible: Some(9),
        }),
        t0,
    );
    assert_eq!(
        d.reason,
        "scale up 0→3: 12 message(s) (3 in flight) / targetQueueLength 5 = 3"
    );
    assert_eq!(d.direction, Direction::Up);
    let d = scaler.decide(&spec(), 3, &unreadable(), t0);
    assert!(
        d.reason.contains("cannot be read (QueueNotFound (404))"),
        "{}",
        d.reason
    );
}
