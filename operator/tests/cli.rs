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

#[tokio::test]
async fn poison_list_and_redrive_work_on_a_local_manifest() {
    use cqrs_storage::azurite::{TestAzurite, unique_name};
    let azurite = TestAzurite::start().await;
    let account = azurite.account();
    let queue = unique_name("orders");
    account.ensure_queue_with_poison(&queue).await.unwrap();
    let poison = account
        .queue(&cqrs_storage::queues::poison_queue_name(&queue))
        .unwrap();
    let b64 = "eyJjb21tYW5kSWQiOiJzY2FuLTIiLCJkZWx0YSI6NH0="; // {"commandId":"scan-2","delta":4}
    for text in [r#"{"commandId":"scan-1","delta":3}"#, b64] {
        let message = azure_storage_queue::models::QueueMessage {
            message_text: Some(text.into()),
        };
        poison
            .send_message(message.try_into().unwrap(), None)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("app.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: cqrs.dev/v1alpha1\nkind: CqrsApp\nmetadata: {{name: shop}}\nspec:\n  \
             storage: {{connectionSecretRef: {{name: unused}}}}\n  queues: [{{name: {queue}}}]\n"
        ),
    )
    .unwrap();
    let cs = azurite.connection_string.to_connection_string();
    let file = manifest.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["poison"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-f", file, "--queue", &queue]);
        operator(&all, &[("CQRS_STORAGE_CONNECTION_STRING", cs.as_str())])
    };

    let listed = run(&["list"]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(stdout.contains("2 message(s)"), "{stdout}");
    assert!(
        stdout.contains(r#"{"commandId":"scan-2","delta":4}"#),
        "base64 JSON decoded: {stdout}"
    );

    let dry = run(&["redrive", "--dry-run"]);
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would move 2"));
    assert_eq!(
        account.peek_poison(&queue, 10).await.unwrap().len(),
        2,
        "a dry run moves nothing"
    );

    let one = run(&["redrive", "--max", "1"]);
    assert!(String::from_utf8_lossy(&one.stdout).contains("moved 1 message(s)"));
    let rest = run(&["redrive"]);
    assert!(String::from_utf8_lossy(&rest.stdout).contains("moved 1 message(s)"));
    assert!(account.peek_poison(&queue, 10).await.unwrap().is_empty());
    let back = account
        .queue(&queue)
        .unwrap()
        .peek_messages(Some(
            azure_storage_queue::models::QueueClientPeekMessagesOptions {
                number_of_messages: Some(32),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_model()
        .unwrap()
        .items
        .unwrap_or_default();
    let texts: Vec<String> = back.into_iter().filter_map(|m| m.message_text).collect();
    assert_eq!(
        texts,
        [r#"{"commandId":"scan-1","delta":3}"#, b64],
        "oldest first, byte for byte"
    );

    let mut args = vec!["poison", "list", "-f", file, "--queue", "nope"];
    let unknown = operator(&args, &[("CQRS_STORAGE_CONNECTION_STRING", cs.as_str())]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains(r#"--queue "nope" is not a queue of CqrsApp shop"#),
        "{stderr}"
    );
    args.truncate(2);
    let nothing = operator(&args, &[]);
    assert!(!nothing.status.success(), "no app named");
}
