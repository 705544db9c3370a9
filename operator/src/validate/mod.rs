//! Validation of a CqrsApp in Rust: the same rules the CRD schema and its CEL rules enforce
//! in the apiserver, applied to every object the operator or the local runtime reads (an
//! older CRD, a manifest file, or a client that skipped validation must not get through).
//! Each error names the field, says why, and what would be accepted.

use std::collections::BTreeSet;
use std::fmt;

use crate::crd::{
    AzureStorageSpec, ClaimCheckSpec, ContainerSpec, CqrsAppSpec, MAX_APP_NAME, QueueSpec,
    ScalingBehavior, ScalingSpec, StorageSpec, WebSpec, WorkerSpec,
};
use k8s_openapi::api::core::v1::EnvVar;

/// Prefix of the environment variables the operator sets; users may not set them.
pub const RESERVED_ENV_PREFIX: &str = "CQRS_";

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.workers[1].queue`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A CqrsApp that must not be acted on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidSpec(pub Vec<FieldError>);

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn check(
        &mut self,
        ok: bool,
        field: impl FnOnce() -> String,
        message: impl FnOnce() -> String,
    ) {
        if !ok {
            self.add(field(), message());
        }
    }
}

/// Validates a whole app: its name (used in child object names) and its spec.
pub fn validate_app(name: &str, spec: &CqrsAppSpec) -> Result<(), InvalidSpec> {
    let mut e = Errors::default();
    e.check(
        !name.is_empty() && name.len() <= MAX_APP_NAME && is_dns_label(name),
        || "metadata.name".into(),
        || format!("{name:?} must be a DNS label of at most {MAX_APP_NAME} characters (the web Service is <name>-web)"),
    );
    for (i, w) in spec.workers.iter().enumerate() {
        e.check(
            name.len() + 1 + w.name.len() <= 63,
            || format!("spec.workers[{i}].name"),
            || format!("{name}-{} is longer than 63 characters (it names the worker's Deployment); shorten the app or worker name", w.name),
        );
    }
    let explicit = spec.claim_check.as_ref().and_then(|c| c.container.as_ref());
    if explicit.is_none()
        && let Some(default) = spec.claim_container(name)
    {
        e.check(
            is_azure_name(&default, 63),
            || "spec.claimCheck.container".into(),
            || format!("the default claim-check container {default:?} is not a valid container name (3-63 lowercase letters, digits and single dashes); set spec.claimCheck.container"),
        );
    }
    validate_spec_into(spec, &mut e);
    if e.0.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec(e.0))
    }
}

/// Validates a spec on its own (names of child objects not considered).
pub fn validate_spec(spec: &CqrsAppSpec) -> Result<(), InvalidSpec> {
    let mut e = Errors::default();
    validate_spec_into(spec, &mut e);
    if e.0.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec(e.0))
    }
}

fn validate_spec_into(spec: &CqrsAppSpec, e: &mut Errors) {
    storage(&spec.storage, e);
    let mut queue_names = BTreeSet::new();
    e.check(
        spec.queues.len() <= 16,
        || "spec.queues".into(),
        || "at most 16 queues".into(),
    );
    for (i, q) in spec.queues.iter().enumerate() {
        queue(i, q, e);
        e.check(
            queue_names.insert(q.name.as_str()),
            || format!("spec.queues[{i}].name"),
            || format!("queue {:?} is listed twice", q.name),
        );
    }
    for (i, q) in spec.queues.iter().enumerate() {
        if let Some(base) = q.name.strip_suffix("-poison") {
            e.check(
                !queue_names.contains(base),
                || format!("spec.queues[{i}].name"),
                || {
                    format!(
                        "{:?} is the poison queue of queue {base:?}; choose another name",
                        q.name
                    )
                },
            );
        }
    }
    let mut container_names = BTreeSet::new();
    e.check(
        spec.containers.len() <= 16,
        || "spec.containers".into(),
        || "at most 16 containers".into(),
    );
    for (i, c) in spec.containers.iter().enumerate() {
        container(i, c, e);
        e.check(
            container_names.insert(c.name.as_str()),
            || format!("spec.containers[{i}].name"),
            || format!("container {:?} is listed twice", c.name),
        );
    }
    if let Some(claims) = &spec.claim_check {
        claim_check(claims, &container_names, e);
    }
    if let Some(web) = &spec.web {
        web_role(web, e);
    }
    let mut worker_names = BTreeSet::new();
    let mut consumed = BTreeSet::new();
    e.check(
        spec.workers.len() <= 16,
        || "spec.workers".into(),
        || "at most 16 worker roles".into(),
    );
    for (i, w) in spec.workers.iter().enumerate() {
        worker(i, w, e);
        e.check(
            worker_names.insert(w.name.as_str()),
            || format!("spec.workers[{i}].name"),
            || format!("worker role {:?} is listed twice", w.name),
        );
        e.check(
            queue_names.contains(w.queue.as_str()),
            || format!("spec.workers[{i}].queue"),
            || {
                let known: Vec<&str> = queue_names.iter().copied().collect();
                format!(
                    "{:?} is not one of spec.queues[].name ({})",
                    w.queue,
                    if known.is_empty() {
                        "none defined".into()
                    } else {
                        known.join(", ")
                    }
                )
            },
        );
        e.check(consumed.insert(w.queue.as_str()), || format!("spec.workers[{i}].queue"), || {
            format!("queue {:?} is already consumed by another worker role; each queue has one worker role", w.queue)
        });
    }
}

fn claim_check(c: &ClaimCheckSpec, containers: &BTreeSet<&str>, e: &mut Errors) {
    use cqrs_storage::claims::{MAX_THRESHOLD_BYTES, MIN_THRESHOLD_BYTES};
    if let Some(name) = &c.container {
        e.check(
            is_azure_name(name, 63),
            || "spec.claimCheck.container".into(),
            || format!("{name:?} must be 3-63 lowercase letters, digits and single dashes"),
        );
        e.check(
            !containers.contains(name.as_str()),
            || "spec.claimCheck.container".into(),
            || format!("{name:?} is also in spec.containers; the claim-check container must be its own (workers delete its blobs)"),
        );
    }
    e.check(
        (MIN_THRESHOLD_BYTES..=MAX_THRESHOLD_BYTES).contains(&c.threshold_bytes),
        || "spec.claimCheck.thresholdBytes".into(),
        || format!("{} must be between {MIN_THRESHOLD_BYTES} and {MAX_THRESHOLD_BYTES} (48 KiB of text is 64 KiB once base64-encoded, Azure's message limit)", c.threshold_bytes),
    );
}

fn storage(s: &StorageSpec, e: &mut Errors) {
    match (&s.connection_secret_ref, &s.azure) {
        (Some(_), Some(_)) | (None, None) => e.add(
            "spec.storage",
            "set exactly one of storage.connectionSecretRef or storage.azure",
        ),
        (Some(secret), None) => {
            e.check(
                is_dns_subdomain(&secret.name),
                || "spec.storage.connectionSecretRef.name".into(),
                || {
                    format!(
                        "{:?} is not a valid Secret name (lowercase DNS subdomain)",
                        secret.name
                    )
                },
            );
            e.check(
                is_secret_key(&secret.key),
                || "spec.storage.connectionSecretRef.key".into(),
                || {
                    format!(
                        "{:?} is not a valid Secret key (letters, digits, '-', '_', '.')",
                        secret.key
                    )
                },
            );
        }
        (None, Some(azure)) => azure_account(azure, e),
    }
    if let Some(endpoint) = &s.public_blob_endpoint {
        let ok = url::Url::parse(endpoint)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none());
        e.check(
            ok,
            || "spec.storage.publicBlobEndpoint".into(),
            || format!("{endpoint:?} must be an http(s) URL without a query string"),
        );
    }
}

fn azure_account(a: &AzureStorageSpec, e: &mut Errors) {
    let p = "spec.storage.azure";
    e.check(
        is_guid(&a.subscription_id),
        || format!("{p}.subscriptionId"),
        || format!("{:?} is not a GUID", a.subscription_id),
    );
    let rg_ok = (1..=90).contains(&a.resource_group.len())
        && a.resource_group
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.()".contains(c))
        && !a.resource_group.ends_with('.');
    e.check(rg_ok, || format!("{p}.resourceGroup"), || {
        format!("{:?} is not a valid resource group name (1-90 letters, digits, '-', '_', '.', '(', ')')", a.resource_group)
    });
    e.check(
        (3..=24).contains(&a.account_name.len())
            && a.account_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        || format!("{p}.accountName"),
        || {
            format!(
                "{:?}: storage account names are 3-24 lowercase letters and digits",
                a.account_name
            )
        },
    );
    if let Some(create) = &a.create_account {
        e.check(
            !create.location.trim().is_empty(),
            || format!("{p}.createAccount.location"),
            || "must name an Azure region, e.g. westeurope".into(),
        );
    }
    if let Some(id) = &a.client_id {
        e.check(
            is_guid(id),
            || format!("{p}.clientId"),
            || format!("{id:?} is not a GUID"),
        );
    }
}

fn queue(i: usize, q: &QueueSpec, e: &mut Errors) {
    let f = |name: &str| format!("spec.queues[{i}].{name}");
    e.check(is_azure_name(&q.name, 56), || f("name"), || {
        format!("{:?}: queue names are 3-56 lowercase letters, digits and single dashes, starting and ending with a letter or digit", q.name)
    });
    e.check(
        (1..=1000).contains(&q.max_dequeue_count),
        || f("maxDequeueCount"),
        || format!("{} is outside 1..=1000", q.max_dequeue_count),
    );
    e.check(
        (1..=604_800).contains(&q.visibility_timeout_seconds),
        || f("visibilityTimeoutSeconds"),
        || {
            format!(
                "{} is outside 1..=604800 (7 days, Azure's limit)",
                q.visibility_timeout_seconds
            )
        },
    );
    e.check(
        q.message_ttl_seconds == -1 || q.message_ttl_seconds >= 1,
        || f("messageTtlSeconds"),
        || {
            format!(
                "{} must be -1 (never expire) or a positive number of seconds",
                q.message_ttl_seconds
            )
        },
    );
}

fn container(i: usize, c: &ContainerSpec, e: &mut Errors) {
    e.check(is_azure_name(&c.name, 63), || format!("spec.containers[{i}].name"), || {
        format!("{:?}: container names are 3-63 lowercase letters, digits and single dashes, starting and ending with a letter or digit", c.name)
    });
    if let Some(cors) = &c.cors {
        e.check(
            (1..=16).contains(&cors.allowed_origins.len()),
            || format!("spec.containers[{i}].cors.allowedOrigins"),
            || "list 1 to 16 origins".into(),
        );
        for (j, origin) in cors.allowed_origins.iter().enumerate() {
            e.check(is_origin(origin), || format!("spec.containers[{i}].cors.allowedOrigins[{j}]"), || {
                format!("{origin:?} must be `*` or an origin like https://shop.example.com (scheme, host, optional port; no path)")
            });
        }
        e.check(
            cors.max_age_seconds <= 86_400,
            || format!("spec.containers[{i}].cors.maxAgeSeconds"),
            || format!("{} is above 86400", cors.max_age_seconds),
        );
    }
}

fn web_role(w: &WebSpec, e: &mut Errors) {
    e.check(
        !w.image.trim().is_empty(),
        || "spec.web.image".into(),
        || "must name a container image".into(),
    );
    e.check(
        (0..=100).contains(&w.replicas),
        || "spec.web.replicas".into(),
        || format!("{} is outside 0..=100", w.replicas),
    );
    e.check(
        (1..=65535).contains(&w.port),
        || "spec.web.port".into(),
        || format!("{} is not a port", w.port),
    );
    e.check(
        (1..=65535).contains(&w.service.port),
        || "spec.web.service.port".into(),
        || format!("{} is not a port", w.service.port),
    );
    env(&w.env, "spec.web.env", e);
}

fn worker(i: usize, w: &WorkerSpec, e: &mut Errors) {
    let f = |name: &str| format!("spec.workers[{i}].{name}");
    e.check(!w.name.is_empty() && w.name.len() <= 40 && is_dns_label(&w.name), || f("name"), || {
        format!("{:?} must be a DNS label (lowercase letters, digits, '-') of at most 40 characters", w.name)
    });
    e.check(
        !w.image.trim().is_empty(),
        || f("image"),
        || "must name a container image".into(),
    );
    if let Some(rate) = w.max_messages_per_second {
        e.check(
            rate >= 1,
            || f("maxMessagesPerSecond"),
            || "must be at least 1 (leave it unset for no limit)".into(),
        );
    }
    env(&w.env, &f("env"), e);
    scaling(&w.scaling, &f("scaling"), e);
}

fn scaling(s: &ScalingSpec, p: &str, e: &mut Errors) {
    e.check(
        (0..=1000).contains(&s.min_replicas),
        || format!("{p}.minReplicas"),
        || format!("{} is outside 0..=1000", s.min_replicas),
    );
    e.check(
        (1..=1000).contains(&s.max_replicas),
        || format!("{p}.maxReplicas"),
        || format!("{} is outside 1..=1000", s.max_replicas),
    );
    e.check(
        s.min_replicas <= s.max_replicas,
        || format!("{p}.minReplicas"),
        || {
            format!(
                "minReplicas ({}) must not exceed maxReplicas ({})",
                s.min_replicas, s.max_replicas
            )
        },
    );
    e.check(
        s.target_queue_length >= 1,
        || format!("{p}.targetQueueLength"),
        || "must be at least 1".into(),
    );
    e.check(
        (1..=3600).contains(&s.polling_interval),
        || format!("{p}.pollingInterval"),
        || format!("{} is outside 1..=3600 seconds", s.polling_interval),
    );
    e.check(
        s.cooldown_period <= 86_400,
        || format!("{p}.cooldownPeriod"),
        || format!("{} is above 86400 seconds", s.cooldown_period),
    );
    behavior(&s.scale_up, &format!("{p}.scaleUp"), e);
    behavior(&s.scale_down, &format!("{p}.scaleDown"), e);
}

fn behavior(b: &ScalingBehavior, p: &str, e: &mut Errors) {
    if let Some(window) = b.stabilization_window_seconds {
        e.check(
            window <= 3600,
            || format!("{p}.stabilizationWindowSeconds"),
            || format!("{window} is above 3600 seconds"),
        );
    }
    if let Some(n) = b.max_step_replicas {
        e.check(
            n >= 1,
            || format!("{p}.maxStepReplicas"),
            || "must be at least 1".into(),
        );
    }
    if let Some(pct) = b.max_step_percent {
        e.check(
            (1..=1000).contains(&pct),
            || format!("{p}.maxStepPercent"),
            || format!("{pct} is outside 1..=1000"),
        );
    }
}

fn env(vars: &[EnvVar], p: &str, e: &mut Errors) {
    e.check(
        vars.len() <= crate::crd::MAX_ENV_VARS,
        || p.to_owned(),
        || {
            format!(
                "{} variables; at most {} are allowed",
                vars.len(),
                crate::crd::MAX_ENV_VARS
            )
        },
    );
    let mut seen = BTreeSet::new();
    for (i, var) in vars.iter().enumerate() {
        let valid = !var.name.is_empty()
            && var
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            && !var.name.starts_with(|c: char| c.is_ascii_digit());
        e.check(
            valid,
            || format!("{p}[{i}].name"),
            || format!("{:?} is not a valid environment variable name", var.name),
        );
        e.check(!var.name.starts_with(RESERVED_ENV_PREFIX), || format!("{p}[{i}].name"), || {
            format!("{:?}: names starting with {RESERVED_ENV_PREFIX} are set by the operator (see the environment contract)", var.name)
        });
        e.check(
            seen.insert(var.name.as_str()),
            || format!("{p}[{i}].name"),
            || format!("{:?} is set twice", var.name),
        );
    }
}

/// Azure queue/container naming: 3..=max lowercase letters, digits, single inner dashes.
pub fn is_azure_name(name: &str, max: usize) -> bool {
    (3..=max).contains(&name.len())
        && name.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// A DNS-1123 label (without the length check).
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name
            .split('.')
            .all(|label| label.len() <= 63 && is_dns_label(label))
}

fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    url::Url::parse(origin).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some()
            && u.path() == "/"
            && u.query().is_none()
            && !origin.ends_with('/')
    })
}

#[cfg(test)]
mod tests;
