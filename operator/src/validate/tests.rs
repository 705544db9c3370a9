use kube::CustomResourceExt;

use super::*;
use crate::crd::CqrsApp;
use crate::testing::{app, invalid};

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
    for (what, mutate, field) in invalid::cross_field() {
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
    for (mutate, field, hint) in invalid::field_rules() {
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

#[test]
fn a_name_too_long_for_the_default_claim_container_needs_an_explicit_one() {
    let mut a = app();
    a.metadata.name = Some(format!("shop-{}", "x".repeat(52)));
    a.spec.workers.clear();
    let rust = rust_errors(&a);
    assert!(
        rust.iter().any(|e| e.field == "spec.claimCheck.container"
            && e.message.contains("set spec.claimCheck.container")),
        "{rust:?}"
    );
    assert!(
        cel_errors(&a).iter().any(|e| e.contains("claim-check")),
        "{:?}",
        cel_errors(&a)
    );
    a.spec.claim_check = Some(crate::crd::ClaimCheckSpec {
        container: Some("shop-claims".into()),
        threshold_bytes: 4096,
    });
    assert_eq!(rust_errors(&a), vec![]);
    assert_eq!(cel_errors(&a), Vec::<String>::new());
}
