//! The Helm chart installed by the real Helm CLI into the real apiserver: every object
//! accepted, the operator's Deployment Available on the kwok node (placed there with the
//! chart's `nodeSelector` and `tolerations`: these releases watch every namespace, and must
//! not act on the other tests' apps), and `helm uninstall` removing everything but the CRD
//! (Helm never deletes CRDs from `crds/`). The `pods` tests run the chart's operator for real.

use std::time::Duration;

use crate::support::{TestNamespace, cluster, ok, root, run, wait_for, with_stdin};

/// Prometheus Operator's ServiceMonitor is not part of Kubernetes; a schema-less stand-in
/// lets the apiserver store the chart's ServiceMonitor.
const SERVICE_MONITOR_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
  "spec": {
    "group": "monitoring.coreos.com", "scope": "Namespaced",
    "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
              "plural": "servicemonitors", "singular": "servicemonitor"},
    "versions": [{"name": "v1", "served": true, "storage": true,
                  "schema": {"openAPIV3Schema": {"type": "object",
                             "x-kubernetes-preserve-unknown-fields": true}}}]
  }
}"#;

/// Installs the chart as `release` into `ns` and waits for its workloads; returns the
/// manifest Helm applied.
fn install(ns: &TestNamespace, release: &str, extra: &[&str]) -> String {
    let chart = root().join("charts/cqrs-operator");
    let out = run(cluster()
        .helm()
        .args(["install", release])
        .arg(&chart)
        .args(["--namespace", &ns.name, "--wait", "--timeout", "120s"])
        .args([
            "--set",
            "nodeSelector.type=kwok",
            "--set",
            "tolerations[0].key=kwok.x-k8s.io/node",
            "--set",
            "tolerations[0].operator=Exists",
            "--set",
            "tolerations[0].effect=NoSchedule",
        ])
        .args(extra));
    assert!(
        out.status.success(),
        "helm install {release} {}: {}{}",
        extra.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ok(cluster()
        .helm()
        .args(["get", "manifest", release, "--namespace", &ns.name]))
}

/// `kind/name` of every object in `manifest` that exists in the cluster.
fn existing(ns: &TestNamespace, manifest: &str) -> Vec<String> {
    let mut get = ns.kubectl();
    get.args(["get", "--ignore-not-found", "-o", "name", "-f", "-"]);
    let out = with_stdin(&mut get, manifest);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The number of objects in a multi-document manifest.
fn objects_in(manifest: &str) -> usize {
    manifest
        .split("\n---")
        .filter(|doc| doc.lines().any(|l| l.starts_with("kind:")))
        .count()
}

fn uninstall(ns: &TestNamespace, release: &str, manifest: &str) {
    ok(cluster().helm().args([
        "uninstall",
        release,
        "--namespace",
        &ns.name,
        "--wait",
        "--timeout",
        "120s",
    ]));
    wait_for(
        "every object of the release to be deleted",
        Duration::from_secs(60),
        || existing(ns, manifest).is_empty().then_some(()),
    );
    ok(cluster()
        .kubectl()
        .args(["get", "crd", "cqrsapps.cqrs.dev", "-o", "name"]));
}

#[test]
fn the_chart_installs_every_object_and_uninstalls_all_but_the_crd() {
    let ns = TestNamespace::create("chart-default");
    let release = format!("cqrs-operator-{}", ns.name.rsplit('-').next().unwrap());
    let manifest = install(&ns, &release, &[]);
    let created = existing(&ns, &manifest);
    assert_eq!(
        created.len(),
        objects_in(&manifest),
        "every object Helm applied exists:\n{created:?}\n{manifest}"
    );
    for kind in [
        "deployment.apps/",
        "serviceaccount/",
        "clusterrole.rbac",
        "service/",
    ] {
        assert!(
            created.iter().any(|o| o.starts_with(kind)),
            "{kind} missing: {created:?}"
        );
    }
    // The operator's pod is placed on the kwok node (it never runs a container there).
    let nodes = ok(ns
        .kubectl()
        .args(["get", "pods", "-o", "jsonpath={.items[*].spec.nodeName}"]));
    assert!(nodes.starts_with("node-"), "pods placed on: {nodes:?}");
    uninstall(&ns, &release, &manifest);
}

#[test]
fn the_chart_installs_with_the_workload_identity_values() {
    let mut create = cluster().kubectl();
    create.args([
        "apply",
        "--server-side",
        "--field-manager=cqrs-tests",
        "-f",
        "-",
    ]);
    let out = with_stdin(&mut create, SERVICE_MONITOR_CRD);
    assert!(out.status.success(), "{out:?}");
    ok(cluster().kubectl().args([
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "--timeout=60s",
    ]));
    let ns = TestNamespace::create("chart-azure");
    let release = format!("cqrs-operator-{}", ns.name.rsplit('-').next().unwrap());
    let values = root().join("charts/cqrs-operator/ci/azure-values.yaml");
    let watch = format!("watchNamespace={}", ns.name);
    let manifest = install(
        &ns,
        &release,
        &["--values", values.to_str().unwrap(), "--set", &watch],
    );
    let created = existing(&ns, &manifest);
    assert_eq!(created.len(), objects_in(&manifest), "{created:?}");
    assert!(
        created
            .iter()
            .any(|o| o.starts_with("servicemonitor.monitoring.coreos.com/")),
        "{created:?}"
    );
    assert!(
        created
            .iter()
            .any(|o| o.starts_with("role.rbac.authorization.k8s.io/")),
        "watchNamespace makes the permissions a Role: {created:?}"
    );
    let client_id = ok(ns.kubectl().args([
        "get",
        "serviceaccount",
        &release,
        "-o",
        "jsonpath={.metadata.annotations.azure\\.workload\\.identity/client-id}",
    ]));
    assert_eq!(client_id, "11111111-2222-3333-4444-555555555555");
    let label = ok(ns.kubectl().args([
        "get",
        "pods",
        "-o",
        "jsonpath={.items[*].metadata.labels.azure\\.workload\\.identity/use}",
    ]));
    assert_eq!(label, "true");
    uninstall(&ns, &release, &manifest);
}

#[test]
fn two_demo_releases_share_a_namespace_without_colliding() {
    let ns = TestNamespace::create("chart-demo");
    let suffix = ns.name.rsplit('-').next().unwrap().to_owned();
    let releases = [format!("demo-a-{suffix}"), format!("demo-b-{suffix}")];
    let manifests: Vec<String> = releases
        .iter()
        .map(|release| install(&ns, release, &["--set", "demo.enabled=true"]))
        .collect();
    let apps = ok(ns.kubectl().args(["get", "cqrsapps", "-o", "name"]));
    assert_eq!(
        apps.lines().count(),
        2,
        "one demo CqrsApp per release:\n{apps}"
    );
    for (release, manifest) in releases.iter().zip(&manifests) {
        assert!(
            apps.contains(&format!("{release}-cqrs-operator-pieshop")),
            "{apps}"
        );
        let created = existing(&ns, manifest);
        assert_eq!(
            created.len(),
            objects_in(manifest),
            "{release}: {created:?}"
        );
        assert!(
            created
                .iter()
                .any(|o| o == &format!("deployment.apps/{release}-cqrs-operator-azurite")),
            "{created:?}"
        );
    }
    for (release, manifest) in releases.iter().zip(&manifests) {
        uninstall(&ns, release, manifest);
    }
}
