//! Conditions from checks, keeping transition times.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{CqrsAppStatus, condition};

/// One condition as the reconciler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// `Ready`, `StorageReady`, ...
    pub type_: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

impl Check {
    /// A condition that holds.
    pub fn ok(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A condition that does not hold.
    pub fn failed(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// `Ready` from the other checks: true when all hold, else the first failure's reason.
pub fn ready(checks: &[Check]) -> Check {
    match checks.iter().find(|c| !c.ok) {
        None => Check::ok(
            condition::READY,
            "AllReady",
            "storage, web and workers are ready",
        ),
        Some(first) => Check::failed(
            condition::READY,
            &first.reason,
            format!("{}: {}", first.type_, first.message),
        ),
    }
}

/// Conditions for `checks`, keeping each one's `lastTransitionTime` while its status does not
/// change.
pub fn conditions(
    previous: &[Condition],
    checks: &[Check],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    checks
        .iter()
        .map(|check| {
            let status = if check.ok { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c.type_ == check.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: check.type_.into(),
                status: status.into(),
                reason: check.reason.clone(),
                message: truncate(&check.message, 1024),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// The condition of `type_` in `status`, if set.
pub fn find<'a>(status: Option<&'a CqrsAppStatus>, type_: &str) -> Option<&'a Condition> {
    status.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reports_the_first_failure() {
        let checks = [
            Check::ok(condition::STORAGE_READY, "Provisioned", "ok"),
            Check::failed(condition::WEB_READY, "ReplicasUnavailable", "0/1 available"),
        ];
        let r = ready(&checks);
        assert!(!r.ok);
        assert_eq!(r.reason, "ReplicasUnavailable");
        assert_eq!(r.message, "WebReady: 0/1 available");
        assert!(ready(&checks[..1]).ok);
    }

    #[test]
    fn transition_times_survive_while_the_status_holds() {
        let t1 = Timestamp::from_second(1_000).unwrap();
        let t2 = Timestamp::from_second(2_000).unwrap();
        let first = conditions(
            &[],
            &[Check::ok("StorageReady", "Provisioned", "a")],
            Some(1),
            t1,
        );
        let same = conditions(
            &first,
            &[Check::ok("StorageReady", "Provisioned", "b")],
            Some(2),
            t2,
        );
        assert_eq!(same[0].last_transition_time, Time(t1));
        assert_eq!(same[0].message, "b");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = conditions(
            &same,
            &[Check::failed("StorageReady", "SecretNotFound", "c")],
            Some(2),
            t2,
        );
        assert_eq!(flipped[0].last_transition_time, Time(t2));
        assert_eq!(flipped[0].status, "False");
    }
}
