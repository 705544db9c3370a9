//! What the reconciler last applied to each child, so that a resync of an unchanged app sends
//! nothing: a child is applied again only when what the spec asks for changed, when the object
//! itself changed since (its `generation`, or its `resourceVersion` for kinds without one, as
//! the watch cache shows it), or when the memo is older than the refresh period (which also
//! repairs what no watch covers: ServiceAccounts, ConfigMaps, metadata edits).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

/// The live object a child is compared with.
#[derive(Debug)]
pub enum Live<'a> {
    /// The kind is watched; this is the watch cache's copy (`None`: not there).
    Watched(Option<&'a ObjectMeta>),
    /// The kind is not watched: only the spec and the refresh period decide.
    Unwatched,
}

#[derive(Debug, Clone)]
struct Entry {
    digest: u64,
    version: Option<String>,
    at: Instant,
}

/// The memo, keyed by `<namespace>/<app>/<kind>/<name>`.
#[derive(Debug)]
pub struct Applied {
    entries: Mutex<HashMap<String, Entry>>,
    refresh: Duration,
}

impl Applied {
    /// A memo whose entries are trusted for `refresh`.
    pub fn new(refresh: Duration) -> Self {
        Self {
            entries: Mutex::default(),
            refresh,
        }
    }

    /// Whether what `digest` stands for was applied to the object `key` as `live` still is.
    pub fn is_current(&self, key: &str, digest: u64, live: Live<'_>) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = entries.get(key) else {
            return false;
        };
        let unchanged = match live {
            Live::Watched(None) => false,
            Live::Watched(Some(meta)) => version(meta) == entry.version,
            Live::Unwatched => true,
        };
        unchanged && entry.digest == digest && entry.at.elapsed() < self.refresh
    }

    /// Records that `digest` was applied to `key`, which the API server answered with `meta`.
    pub fn record(&self, key: String, digest: u64, meta: Option<&ObjectMeta>) {
        let entry = Entry {
            digest,
            version: meta.and_then(version),
            at: Instant::now(),
        };
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, entry);
    }

    /// Whether `digest` was recorded for `key` less than `within` ago.
    pub fn recorded_within(&self, key: &str, digest: u64, within: Duration) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|e| e.digest == digest && e.at.elapsed() < within)
    }

    /// Whether anything was recorded for `key` (and not forgotten since).
    pub fn knows(&self, key: &str) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Forgets `key` (its next apply is sent whatever it holds).
    pub fn forget(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Forgets every child of app `app` in `namespace`.
    pub fn forget_app(&self, namespace: &str, app: &str) {
        let prefix = format!("{namespace}/{app}/");
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !k.starts_with(&prefix));
    }
}

/// The memo key of child `name` of kind `kind` of app `app`.
pub fn key(namespace: &str, app: &str, kind: &str, name: &str) -> String {
    format!("{namespace}/{app}/{kind}/{name}")
}

/// The memo key of child `name` of kind `K` of app `app`.
pub fn key_of<K: kube::Resource<DynamicType = ()>>(
    namespace: &str,
    app: &str,
    name: &str,
) -> String {
    key(namespace, app, &K::kind(&()), name)
}

/// A digest of what is applied (its JSON form).
pub fn digest<T: Serialize>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_vec(value)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// What identifies a version of an object's intent: its `generation` (bumped by spec changes
/// only, so status updates do not count), else its `resourceVersion`.
fn version(meta: &ObjectMeta) -> Option<String> {
    meta.generation
        .map(|g| format!("g{g}"))
        .or_else(|| meta.resource_version.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(generation: i64) -> ObjectMeta {
        ObjectMeta {
            generation: Some(generation),
            resource_version: Some(format!("rv{generation}")),
            ..Default::default()
        }
    }

    #[test]
    fn a_child_is_current_until_its_spec_the_object_or_the_period_changes() {
        let memo = Applied::new(Duration::from_secs(600));
        let k = key("shop", "pies", "Deployment", "pies-stocker");
        assert!(!memo.is_current(&k, 1, Live::Watched(Some(&meta(3)))));
        memo.record(k.clone(), 1, Some(&meta(3)));
        assert!(memo.is_current(&k, 1, Live::Watched(Some(&meta(3)))));
        // another spec, another generation (someone edited it), or gone from the cache
        assert!(!memo.is_current(&k, 2, Live::Watched(Some(&meta(3)))));
        assert!(!memo.is_current(&k, 1, Live::Watched(Some(&meta(4)))));
        assert!(!memo.is_current(&k, 1, Live::Watched(None)));
        memo.forget_app("shop", "pies");
        assert!(!memo.is_current(&k, 1, Live::Watched(Some(&meta(3)))));

        let sa = key("shop", "pies", "ServiceAccount", "pies");
        memo.record(sa.clone(), 7, None);
        assert!(memo.is_current(&sa, 7, Live::Unwatched));
        let expired = Applied::new(Duration::ZERO);
        expired.record(sa.clone(), 7, None);
        assert!(!expired.is_current(&sa, 7, Live::Unwatched));
    }

    #[test]
    fn digests_follow_content() {
        assert_eq!(
            digest(&serde_json::json!({"a": 1})),
            digest(&serde_json::json!({"a": 1}))
        );
        assert_ne!(
            digest(&serde_json::json!({"a": 1})),
            digest(&serde_json::json!({"a": 2}))
        );
    }
}
