use kube::CustomResourceExt;

use super::*;
use crate::crd::{CorsSpec, CqrsApp, CreateAccountSpec, SecretKeyRef, WorkerSpec};
use crate::testing::{app, worker};

/// Runs the CRD's CEL rules client-side (kube's CEL evaluator over the generated schema), as
/// the apiserver would.
fn cel_errors(app: &CqrsApp) -> Vec<String> {
    let crd = CqrsApp::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap();
    let schema = serde_json::to_value(schema).unwrap();
    let object = serde_json::to_value(app).unwrap();
    match kube::core::cel::Validator::new().validate(&schema, &object, None) {
        Ok(()) => vec![],
        Err(errors) => errors.into_vec().iter().map(ToString::to_string).collect(),
    }
}

fn rust_errors(app: &CqrsApp) -> Vec<FieldError> {
    match validate_app(app.metadata.name.as_deref().unwrap_or_default(), &app.spec) {
        Ok(()) => vec![],
        Err(InvalidSpec(errors)) => errors,
    }
}

#[test]
fn the_baseline_fixture_is_valid_for_rust_and_cel() {
    let a = app();
    assert_eq!(rust_errors(&a), vec![]);
    assert_eq!(cel_errors(&a), Vec::<String>::new());
}

/// Cross-field rules: both the CEL rules in the CRD and the Rust validation reject them.
#[test]
fn cross_field_rules_are_enforced_by_cel_and_rust_alike() {
    type Mutation = fn(&mut CqrsApp);
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "both storage kinds",
            |a| {
                a.spec.storage.azure = Some(AzureStorageSpec {
                    subscription_id: "00000000-0000-0000-0000-000000000000".into(),
                    resource_group: "rg".into(),
                    account_name: "acct123".into(),
                    create_account: None,
                    client_id: None,
                })
            },
            "spec.storage",
        ),
        (
            "no storage kind",
            |a| a.spec.storage.connection_secret_ref = None,
            "spec.storage",
        ),
        (
            "min above max",
            |a| {
                a.spec.workers[0].scaling.min_replicas = 5;
                a.spec.workers[0].scaling.max_replicas = 2;
            },
            "spec.workers[0].scaling.minReplicas",
        ),
        (
            "worker on an unknown queue",
            |a| a.spec.workers[0].queue = "nosuchqueue".into(),
            "spec.workers[0].queue",
        ),
        (
            "two workers on one queue",
            |a| {
                let mut twin = worker("twin", "registrations");
                twin.image = "img".into();
                a.spec.workers.push(twin);
            },
            "spec.workers[2].queue",
        ),
        (
            "a queue named like a poison queue",
            |a| {
                a.spec.queues.push(QueueSpec {
                    name: "registrations-poison".into(),
                    ..a.spec.queues[0].clone()
                })
            },
            "spec.queues[2].name",
        ),
        (
            "app name too long",
            |a| a.metadata.name = Some("a".repeat(60)),
            "metadata.name",
        ),
        (
            "app plus worker name too long",
            |a| {
                a.metadata.name = Some("a".repeat(40));
                a.spec.workers[0].name = "w".repeat(30);
            },
            "spec.workers[0].name",
        ),
    ];
    for (what, mutate, field) in cases {
        let mut a = app();
        mutate(&mut a);
        let rust = rust_errors(&a);
        assert!(
            rust.iter().any(|e| e.field == field),
            "{what}: Rust should flag {field}, got {rust:?}"
        );
        assert!(
            !cel_errors(&a).is_empty(),
            "{what}: the CRD's CEL rules should reject it"
        );
    }
}

/// Per-field rules (the schema's patterns, lengths and ranges), mirrored in Rust.
#[test]
fn field_rules_name_the_field_and_say_what_is_accepted() {
    type Mutation = fn(&mut CqrsApp);
    let cases: Vec<(Mutation, &str, &str)> = vec![
        (
            |a| a.spec.queues[0].name = "Orders".into(),
            "spec.queues[0].name",
            "lowercase",
        ),
        (
            |a| a.spec.queues[0].name = "ab".into(),
            "spec.queues[0].name",
            "3-56",
        ),
        (
            |a| a.spec.queues[0].name = "a--b".into(),
            "spec.queues[0].name",
            "single dashes",
        ),
        (
            |a| a.spec.queues[0].name = "-abc".into(),
            "spec.queues[0].name",
            "starting and ending",
        ),
        (
            |a| a.spec.queues[0].name = "q".repeat(57),
            "spec.queues[0].name",
            "3-56",
        ),
        (
            |a| a.spec.queues[0].max_dequeue_count = 0,
            "spec.queues[0].maxDequeueCount",
            "1..=1000",
        ),
        (
            |a| a.spec.queues[0].visibility_timeout_seconds = 0,
            "spec.queues[0].visibilityTimeoutSeconds",
            "7 days",
        ),
        (
            |a| a.spec.queues[0].message_ttl_seconds = 0,
            "spec.queues[0].messageTtlSeconds",
            "-1",
        ),
        (
            |a| a.spec.queues.push(a.spec.queues[0].clone()),
            "spec.queues[2].name",
            "listed twice",
        ),
        (
            |a| a.spec.containers[0].name = "re_sults".into(),
            "spec.containers[0].name",
            "3-63",
        ),
        (
            |a| a.spec.containers[0].name = "c".repeat(64),
            "spec.containers[0].name",
            "3-63",
        ),
        (
            |a| {
                a.spec.containers[0].cors = Some(CorsSpec {
                    allowed_origins: vec!["http://x/path".into()],
                    max_age_seconds: 1,
                })
            },
            "spec.containers[0].cors.allowedOrigins[0]",
            "no path",
        ),
        (
            |a| {
                a.spec.containers[0].cors = Some(CorsSpec {
                    allowed_origins: vec![],
                    max_age_seconds: 1,
                })
            },
            "spec.containers[0].cors.allowedOrigins",
            "1 to 16",
        ),
        (
            |a| {
                a.spec.storage.connection_secret_ref = Some(SecretKeyRef {
                    name: "Bad_Name".into(),
                    key: "k".into(),
                })
            },
            "spec.storage.connectionSecretRef.name",
            "Secret name",
        ),
        (
            |a| a.spec.storage.public_blob_endpoint = Some("ftp://x".into()),
            "spec.storage.publicBlobEndpoint",
            "http(s)",
        ),
        (
            |a| {
                a.spec.storage.connection_secret_ref = None;
                a.spec.storage.azure = Some(AzureStorageSpec {
                    subscription_id: "not-a-guid".into(),
                    resource_group: "rg".into(),
                    account_name: "Bad-Account".into(),
                    create_account: Some(CreateAccountSpec {
                        location: " ".into(),
                        sku: Default::default(),
                    }),
                    client_id: Some("x".into()),
                });
            },
            "spec.storage.azure.subscriptionId",
            "GUID",
        ),
        (
            |a| a.spec.web.as_mut().unwrap().image = " ".into(),
            "spec.web.image",
            "container image",
        ),
        (
            |a| a.spec.web.as_mut().unwrap().port = 70000,
            "spec.web.port",
            "not a port",
        ),
        (
            |a| {
                a.spec
                    .web
                    .as_mut()
                    .unwrap()
                    .env
                    .push(k8s_openapi::api::core::v1::EnvVar {
                        name: "CQRS_QUEUE".into(),
                        ..Default::default()
                    })
            },
            "spec.web.env[1].name",
            "set by the operator",
        ),
        (
            |a| a.spec.workers[0].name = "Registrar".into(),
            "spec.workers[0].name",
            "DNS label",
        ),
        (
            |a| a.spec.workers[0].max_messages_per_second = Some(0),
            "spec.workers[0].maxMessagesPerSecond",
            "at least 1",
        ),
        (
            |a| a.spec.workers[0].scaling.polling_interval = 0,
            "spec.workers[0].scaling.pollingInterval",
            "1..=3600",
        ),
        (
            |a| a.spec.workers[0].scaling.target_queue_length = 0,
            "spec.workers[0].scaling.targetQueueLength",
            "at least 1",
        ),
        (
            |a| a.spec.workers[0].scaling.scale_down.max_step_percent = Some(0),
            "spec.workers[0].scaling.scaleDown.maxStepPercent",
            "1..=1000",
        ),
        (
            |a| {
                a.spec.workers.push(WorkerSpec {
                    queue: "inventory".into(),
                    ..a.spec.workers[0].clone()
                })
            },
            "spec.workers[2].name",
            "listed twice",
        ),
    ];
    for (mutate, field, hint) in cases {
        let mut a = app();
        mutate(&mut a);
        let errors = rust_errors(&a);
        let found = errors.iter().find(|e| e.field == field);
        let Some(found) = found else {
            panic!("expected an error on {field}, got {errors:?}")
        };
        assert!(
            found.message.contains(hint),
            "{field}: {:?} should mention {hint:?}",
            found.message
        );
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let mut a = app();
    a.spec.queues[0].name = "X".into();
    a.spec.workers[0].scaling.polling_interval = 0;
    let message = validate_app("pieshop", &a.spec).unwrap_err().to_string();
    assert!(
        message.contains("spec.queues[0].name")
            && message.contains("spec.workers[0].scaling.pollingInterval"),
        "{message}"
    );
}

#[test]
fn azure_names_follow_azure_rules() {
    for ok in ["abc", "a-b-c", "0rders", &"a".repeat(63)] {
        assert!(is_azure_name(ok, 63), "{ok}");
    }
    for bad in [
        "ab",
        "a-",
        "-a",
        "a--b",
        "aBc",
        "a_b",
        "a.b",
        &"a".repeat(64),
    ] {
        assert!(!is_azure_name(bad, 63), "{bad}");
    }
}
