//! The generated CRD on a real apiserver: accepted (every CEL rule compiles within the cost
//! budget), Established, documented in `kubectl explain`, listed with its printer columns, and
//! validating server side exactly what the Rust validation rejects.

use cqrs_operator::crd::CqrsApp;
use cqrs_operator::testing::{app, invalid};
use kube::CustomResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::support::{TestNamespace, cluster, crd_file, ensure_crd, ok};

/// The baseline fixture as a new object in `namespace` (no uid, generation or status).
fn fresh(mut app: CqrsApp, namespace: &str) -> CqrsApp {
    app.metadata = ObjectMeta {
        name: app.metadata.name.take(),
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    };
    app.status = None;
    app
}

#[test]
fn the_crd_is_accepted_and_established_with_every_rule_compiled() {
    ensure_crd();
    let json = ok(cluster()
        .kubectl()
        .args(["get", "crd", "cqrsapps.cqrs.dev", "-o", "json"]));
    let crd: serde_json::Value = serde_json::from_str(&json).expect("CRD as JSON");
    let conditions = crd["status"]["conditions"]
        .as_array()
        .expect("the CRD has status conditions");
    let status = |kind: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == kind)
            .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(
        status("Established").as_deref(),
        Some("True"),
        "{conditions:?}"
    );
    assert_eq!(
        status("NamesAccepted").as_deref(),
        Some("True"),
        "{conditions:?}"
    );
    assert_eq!(status("NonStructuralSchema"), None, "{conditions:?}");
    // Every CEL rule the Rust types generate was compiled and stored.
    let generated = serde_json::to_value(CqrsApp::crd()).expect("CRD as JSON");
    let stored = rules(&crd["spec"]["versions"]);
    assert!(!stored.is_empty(), "the CRD carries CEL rules");
    assert_eq!(stored, rules(&generated["spec"]["versions"]));
    let file: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(crd_file()).expect("the chart's CRD file"))
            .expect("the chart's CRD is YAML");
    assert_eq!(
        stored,
        rules(&file["spec"]["versions"]),
        "the chart's CRD file carries them"
    );
}

/// Every `x-kubernetes-validations[].rule` in a schema, depth first.
fn rules(schema: &serde_json::Value) -> Vec<String> {
    let mut out = vec![];
    match schema {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if key == "x-kubernetes-validations" {
                    out.extend(
                        value
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|r| r["rule"].as_str().map(str::to_owned)),
                    );
                } else {
                    out.extend(rules(value));
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| out.extend(rules(i))),
        _ => {}
    }
    out
}

/// The description of `spec.workers[].scaling` as the Rust doc comment generated it.
fn scaling_description() -> String {
    let crd = serde_json::to_value(CqrsApp::crd()).expect("CRD as JSON");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    schema["properties"]["spec"]["properties"]["workers"]["items"]["properties"]["scaling"]
        ["description"]
        .as_str()
        .expect("scaling has a description")
        .to_owned()
}

#[test]
fn kubectl_explain_shows_the_field_docs() {
    ensure_crd();
    let explained = ok(cluster()
        .kubectl()
        .args(["explain", "cqrsapp.spec.workers.scaling"]));
    let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat(&explained).contains(&flat(&scaling_description())),
        "kubectl explain should show the doc comment of `scaling`:\n{explained}"
    );
    for field in [
        "cooldownPeriod",
        "targetQueueLength",
        "minReplicas",
        "scaleDown",
    ] {
        assert!(explained.contains(field), "{field} missing:\n{explained}");
    }
}

#[test]
fn kubectl_get_shows_the_printer_columns_and_knows_the_short_name() {
    ensure_crd();
    let ns = TestNamespace::create("crd-columns");
    let object = serde_json::to_string(&fresh(app(), &ns.name)).expect("app as JSON");
    let mut apply = ns.kubectl();
    apply.args(["apply", "-f", "-"]);
    let applied = crate::support::with_stdin(&mut apply, &object);
    assert!(applied.status.success(), "{applied:?}");
    let table = ok(ns.kubectl().args(["get", "cqrsapps"]));
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "READY", "QUEUE DEPTH", "WORKERS", "AGE"] {
        assert!(header.contains(column), "{column} missing in:\n{table}");
    }
    assert!(table.contains("pieshop"), "{table}");
    let short = ok(ns.kubectl().args(["get", "cqrs", "-o", "name"]));
    assert_eq!(short.trim(), "cqrsapp.cqrs.dev/pieshop");
}

#[test]
fn every_example_is_accepted_by_a_server_side_dry_run() {
    ensure_crd();
    let ns = TestNamespace::create("crd-examples");
    let examples = crate::support::root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .expect("examples/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", examples.display());
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable example");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut object: serde_json::Value =
                serde::Deserialize::deserialize(document).expect("example is YAML");
            // Examples name their own namespace; the test runs them in its own.
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("namespace");
            }
            let mut apply = ns.kubectl();
            apply.args(["apply", "--dry-run=server", "-f", "-"]);
            let out = crate::support::with_stdin(&mut apply, &object.to_string());
            assert!(
                out.status.success(),
                "{} ({}) is rejected by the apiserver: {}",
                file.display(),
                object["kind"],
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The paths the apiserver may name for `field`: the field itself, then each enclosing one
/// (a CEL rule reports the object it is attached to, `spec.workers` for a rule on the list).
fn field_and_parents(field: &str) -> Vec<String> {
    let mut out = vec![field.to_owned()];
    let mut rest = field;
    while let Some(cut) = rest.rfind(['.', '[']) {
        rest = &rest[..cut];
        if rest.contains('.') {
            out.push(rest.to_owned());
        }
    }
    out
}

#[tokio::test]
async fn every_invalid_app_of_the_rust_validation_is_rejected_by_the_apiserver_naming_the_field() {
    ensure_crd();
    let ns = TestNamespace::create("crd-parity");
    let api: Api<CqrsApp> = Api::namespaced(cluster().client().await, &ns.name);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&dry_run, &fresh(app(), &ns.name))
        .await
        .expect("the baseline fixture is valid for the apiserver too");
    let mut mismatches = vec![];
    for case in invalid::all() {
        let object = fresh(case.app(), &ns.name);
        match api.create(&dry_run, &object).await {
            Ok(_) => mismatches.push(format!(
                "{} ({}): accepted by the apiserver",
                case.what, case.field
            )),
            Err(kube::Error::Api(status)) => {
                let named = field_and_parents(case.field)
                    .iter()
                    .any(|f| status.message.contains(f.as_str()));
                if status.code != 422 || !named {
                    mismatches.push(format!(
                        "{} ({}): rejected with {} but the message does not name the field: {}",
                        case.what, case.field, status.code, status.message
                    ));
                }
            }
            Err(other) => panic!("{}: unexpected error {other}", case.what),
        }
    }
    assert!(
        mismatches.is_empty(),
        "Rust validation and the apiserver disagree:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn enclosing_fields_are_offered_from_the_innermost_out() {
    assert_eq!(
        field_and_parents("spec.workers[2].queue"),
        ["spec.workers[2].queue", "spec.workers[2]", "spec.workers"]
    );
    assert_eq!(field_and_parents("metadata.name"), ["metadata.name"]);
}
