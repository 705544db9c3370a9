//! The `cqrs-operator` binary's behaviour at its edges: no cluster, bad manifests, CRD output.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

use std::process::{Command, Output};

fn operator(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cqrs-operator"));
    cmd.args(args).env_remove("KUBERNETES_SERVICE_HOST");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn run_without_a_reachable_cluster_exits_nonzero_naming_kubeconfig_and_server() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster: {server: 'https://127.0.0.1:1'}\n\
         contexts:\n- name: gone\n  context: {cluster: gone, user: u}\ncurrent-context: gone\nusers:\n- name: u\n  user: {token: t}\n",
    )
    .unwrap();
    let out = operator(
        &["run", "--log-format", "text"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("https://127.0.0.1:1"), "{stderr}");
    assert!(stderr.contains(kubeconfig.to_str().unwrap()), "{stderr}");
}

#[test]
fn run_without_any_kubeconfig_says_where_it_looked() {
    let out = operator(&["run"], &[("KUBECONFIG", "/nonexistent/kubeconfig")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no Kubernetes cluster configuration found")
            && stderr.contains("/nonexistent/kubeconfig"),
        "{stderr}"
    );
}

#[test]
fn validate_names_the_field_of_a_bad_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.yaml");
    std::fs::write(
        &file,
        "apiVersion: cqrs.dev/v1alpha1\nkind: CqrsApp\nmetadata: {name: shop}\nspec:\n  storage: {connectionSecretRef: {name: s}}\n  queues: [{name: Orders}]\n",
    )
    .unwrap();
    let out = operator(&["validate", "-f", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.queues[0].name"), "{stderr}");
}

#[test]
fn crd_prints_the_custom_resource_definition() {
    let out = operator(&["crd"], &[]);
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("name: cqrsapps.cqrs.dev") && yaml.contains("x-kubernetes-validations"));
}
