//! Workloads on the kwok node (selected, its taint tolerated): the scheduler places pods, kwok
//! reports them Running, and the controller-manager's deployment and replicaset controllers
//! make Deployments Available.

use crate::support::{TestNamespace, ok, with_stdin};

#[test]
fn a_deployment_becomes_available_through_the_scheduler_and_kwok() {
    let ns = TestNamespace::create("deploy");
    let deployment = r#"{
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hello"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "hello"}},
            "template": {
                "metadata": {"labels": {"app": "hello"}},
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "hello", "image": "example.invalid/hello:1"}]
                }
            }
        }
    }"#;
    let mut apply = ns.kubectl();
    apply.args(["apply", "-f", "-"]);
    let out = with_stdin(&mut apply, deployment);
    assert!(out.status.success(), "{out:?}");
    ok(ns.kubectl().args([
        "wait",
        "--for=condition=Available",
        "deployment/hello",
        "--timeout=60s",
    ]));
    let pods = ok(ns.kubectl().args([
        "get",
        "pods",
        "-l",
        "app=hello",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
    ]));
    let lines: Vec<&str> = pods.lines().collect();
    assert_eq!(lines.len(), 2, "{pods}");
    for line in lines {
        assert!(
            line.starts_with("node-") && line.ends_with(" Running"),
            "{pods}"
        );
    }
    // The garbage collector removes the ReplicaSet and pods with their Deployment.
    ok(ns.kubectl().args([
        "delete",
        "deployment",
        "hello",
        "--wait=true",
        "--timeout=60s",
    ]));
    crate::support::wait_for(
        "the ReplicaSet and pods to be collected",
        std::time::Duration::from_secs(60),
        || {
            let left =
                ok(ns
                    .kubectl()
                    .args(["get", "replicasets,pods", "-l", "app=hello", "-o", "name"]));
            left.trim().is_empty().then_some(())
        },
    );
}
