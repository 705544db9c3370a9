//! Which watch events of an app's children reconcile the app.
//!
//! A new worker Deployment changes a handful of times in its first seconds (the reconciler's
//! apply, the scaler's claim, the Deployment controller's status updates); a thousand new
//! apps made each of those a reconciliation. The reconciler acts on few of a Deployment's
//! fields, so only changes of those (and deletions) wake it.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Resource;
use kube::runtime::watcher;

/// What of a Deployment the reconciler acts on: its generation (a spec change: the
/// reconciler's, the scaler's or drift), its available replicas (the web role's `WebReady`),
/// and whether it is being deleted.
pub fn deployment_signature(deployment: &Deployment) -> u64 {
    let mut hasher = DefaultHasher::new();
    (
        deployment.metadata.generation,
        deployment
            .status
            .as_ref()
            .and_then(|s| s.available_replicas),
        deployment.metadata.deletion_timestamp.is_some(),
    )
        .hash(&mut hasher);
    hasher.finish()
}

/// The objects of `events` whose `signature` differs from the one last passed on for the same
/// object (by uid), and every deleted object; the rest of the watch's events are dropped.
pub fn changed<K, S>(
    events: S,
    signature: fn(&K) -> u64,
) -> impl Stream<Item = Result<K, watcher::Error>>
where
    K: Resource,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    events.filter_map(move |event| {
        let passed = match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let uid = object.meta().uid.clone().unwrap_or_default();
                let new = signature(&object);
                (seen.insert(uid, new) != Some(new)).then_some(Ok(object))
            }
            Ok(watcher::Event::Delete(object)) => {
                seen.remove(object.meta().uid.as_deref().unwrap_or_default());
                Some(Ok(object))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(passed)
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use serde_json::json;

    use super::*;

    fn deployment(uid: &str, generation: i64, available: Option<i32>) -> Deployment {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": { "name": "w", "namespace": "ns", "uid": uid, "generation": generation },
        }))
        .unwrap();
        d.status = Some(DeploymentStatus {
            available_replicas: available,
            observed_generation: Some(generation),
            ..Default::default()
        });
        d
    }

    #[tokio::test]
    async fn only_changes_the_reconciler_acts_on_pass() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let mut claimed = deployment("a", 1, None);
        claimed.metadata.resource_version = Some("9".into());
        let mut observed = deployment("a", 1, None);
        observed.status.as_mut().unwrap().conditions = Some(vec![]);
        let events = vec![
            Init,
            InitApply(deployment("a", 1, None)),
            InitDone,
            Apply(claimed),                     // the scaler's claim: same generation
            Apply(observed),                    // the controller's status update
            Apply(deployment("a", 2, None)),    // a spec change
            Apply(deployment("a", 2, Some(1))), // a replica became available
            Apply(deployment("b", 1, None)),    // another Deployment
            Delete(deployment("a", 2, Some(1))),
            Apply(deployment("a", 2, Some(1))), // made again after its deletion
        ];
        let passed: Vec<(String, i64, Option<i32>)> = changed(
            futures::stream::iter(events.into_iter().map(Ok)),
            deployment_signature,
        )
        .map(|d| {
            let d = d.unwrap();
            (
                d.metadata.uid.unwrap(),
                d.metadata.generation.unwrap(),
                d.status.unwrap().available_replicas,
            )
        })
        .collect()
        .await;
        let expected = [
            ("a", 1, None),
            ("a", 2, None),
            ("a", 2, Some(1)),
            ("b", 1, None),
            ("a", 2, Some(1)),
            ("a", 2, Some(1)),
        ]
        .map(|(u, g, a)| (u.to_string(), g, a));
        assert_eq!(passed, expected);
    }
}
