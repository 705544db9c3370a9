//! The environment contract as written to Kubernetes: a role's pod template is read from the
//! API, its environment resolved the way the kubelet resolves it (values, `secretKeyRef`,
//! `configMapKeyRef`, `fieldRef`, `$(VAR)` references, ConfigMap volumes as files), and the
//! `reference-app` binary runs on the host with exactly that, draining its real queue.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, EnvVar, EnvVarSource, PodSpec, Secret,
};
use kube::api::Api;

use crate::harness::Harness;
use crate::support::run;

/// The `reference-app` binary of this build (`cargo test --workspace` builds it).
fn reference_app() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("reference-app");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p reference-app` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A role process started from a pod template, killed when dropped.
struct HostPod {
    child: Child,
    log: PathBuf,
    _files: tempfile::TempDir,
}

impl Drop for HostPod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// `$(NAME)` references to variables defined earlier, as the kubelet expands them.
fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = value.to_owned();
    for (name, v) in env {
        out = out.replace(&format!("$({name})"), v);
    }
    out
}

async fn resolve(
    client: &kube::Client,
    ns: &str,
    pod: &PodSpec,
    files: &Path,
) -> BTreeMap<String, String> {
    let container = &pod.containers[0];
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    // ConfigMap volumes become files under `files`, at their mount paths.
    let mut mounts = vec![];
    for mount in container.volume_mounts.iter().flatten() {
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .expect("a mounted volume exists");
        if let Some(source) = &volume.config_map {
            let cm = configmaps
                .get(&source.name)
                .await
                .expect("the mounted ConfigMap");
            let dir = files.join(mount.mount_path.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).expect("a mount dir");
            for (key, value) in cm.data.iter().flatten() {
                std::fs::write(dir.join(key), value).expect("a mounted file");
            }
            mounts.push((mount.mount_path.clone(), dir));
        } else {
            // An emptyDir (/tmp): a fresh directory.
            let dir = files.join(mount.mount_path.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).expect("a mount dir");
            mounts.push((mount.mount_path.clone(), dir));
        }
    }
    let mut env = BTreeMap::new();
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let resolved = match (value, value_from) {
            (Some(v), _) => expand(v, &env),
            (
                None,
                Some(EnvVarSource {
                    secret_key_ref: Some(s),
                    ..
                }),
            ) => {
                let secret = secrets.get(&s.name).await.expect("the referenced Secret");
                let bytes = &secret.data.as_ref().expect("Secret data")[&s.key];
                String::from_utf8(bytes.0.clone()).expect("UTF-8 Secret value")
            }
            (
                None,
                Some(EnvVarSource {
                    config_map_key_ref: Some(c),
                    ..
                }),
            ) => {
                let cm = configmaps
                    .get(&c.name)
                    .await
                    .expect("the referenced ConfigMap");
                cm.data.as_ref().expect("ConfigMap data")[&c.key].clone()
            }
            (
                None,
                Some(EnvVarSource {
                    field_ref: Some(f), ..
                }),
            ) => match f.field_path.as_str() {
                "metadata.namespace" => ns.to_owned(),
                "metadata.name" => "host-pod-0".to_owned(),
                other => panic!("fieldRef {other} is not resolved by this test"),
            },
            (None, other) => panic!("{name}: an env source this test does not resolve: {other:?}"),
        };
        // Paths inside a mount point at the mount's files on the host.
        let resolved = mounts.iter().fold(resolved, |v, (path, dir)| {
            v.strip_prefix(path.as_str())
                .map_or(v.clone(), |rest| format!("{}{rest}", dir.display()))
        });
        env.insert(name.clone(), resolved);
    }
    env
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts Deployment `name`'s container on the host with the resolved environment. The one
/// change: `CQRS_PORT` is a free port, since host processes share one network namespace.
async fn start_role(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> (HostPod, u16, BTreeMap<String, String>) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment = deployments.get(name).await.expect("the Deployment");
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("a pod template");
    let files = tempfile::tempdir().expect("a temp dir");
    let env = resolve(client, ns, &pod, files.path()).await;
    let port = free_port();
    let log = files.path().join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("a log file");
    let child = Command::new(reference_app())
        .args(pod.containers[0].args.iter().flatten())
        .env_clear()
        .envs(&env)
        .env("CQRS_PORT", port.to_string())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("reference-app starts");
    (
        HostPod {
            child,
            log,
            _files: files,
        },
        port,
        env,
    )
}

#[tokio::test]
async fn the_pod_templates_environment_runs_the_real_roles() {
    let h = Harness::start("life-contract").await;
    let (ns, client) = (&h.ns, &h.client);
    h.create_secret();
    let out = run(ns.kubectl().args([
        "create",
        "configmap",
        "shop-settings",
        "--from-literal=greeting=hello",
    ]));
    assert!(out.status.success(), "{out:?}");
    let mut app = h.test_app();
    app.spec.workers[0].max_messages_per_second = Some(50);
    app.spec.web.as_mut().expect("a web role").env.push(EnvVar {
        name: "GREETING".into(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: "shop-settings".into(),
                key: "greeting".into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    // The reference app's own settings: which of the app's queues and containers it uses.
    let names = [
        ("REGISTRATION_QUEUE", app.spec.queues[0].name.clone()),
        ("INVENTORY_QUEUE", app.spec.queues[1].name.clone()),
        ("RESULTS_CONTAINER", app.spec.containers[0].name.clone()),
        ("READMODEL_CONTAINER", app.spec.containers[1].name.clone()),
    ];
    let settings: Vec<EnvVar> = names
        .iter()
        .map(|(name, value)| EnvVar {
            name: (*name).into(),
            value: Some(value.clone()),
            ..Default::default()
        })
        .collect();
    app.spec
        .web
        .as_mut()
        .expect("a web role")
        .env
        .extend(settings.clone());
    app.spec.workers[0].env.extend(settings);
    h.create(&app).await;
    h.wait_ready("shop");

    let (web, web_port, web_env) = start_role(client, &ns.name, "shop-web").await;
    assert_eq!(
        web_env.get("GREETING").map(String::as_str),
        Some("hello"),
        "configMapKeyRef"
    );
    let (worker, _, worker_env) = start_role(client, &ns.name, "shop-registrar").await;
    let share = worker_env
        .get("CQRS_RATE_SHARE_FILE")
        .expect("the rate share file");
    assert_eq!(
        std::fs::read_to_string(share)
            .expect("the mounted share")
            .trim(),
        "50.000"
    );

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{web_port}");
    let started = Instant::now();
    loop {
        if http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the web role never answered /healthz"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted = http
        .post(format!("{base}/api/registrations"))
        .json(&serde_json::json!({
            "firstName": "Ada", "lastName": "Lovelace",
            "email": "ada@example.com", "dateOfBirth": "1990-12-10"
        }))
        .send()
        .await
        .expect("the web role answers");
    assert_eq!(accepted.status(), 202);
    let accepted: serde_json::Value = accepted.json().await.expect("JSON");
    let url = accepted["resultUrl"]
        .as_str()
        .expect("a result URL")
        .to_owned();
    // The worker drains the queue and writes the token into the result blob.
    let started = Instant::now();
    let token = loop {
        let result: serde_json::Value = http
            .get(&url)
            .send()
            .await
            .expect("the result blob")
            .json()
            .await
            .unwrap_or_default();
        if let Some(token) = result["registrationToken"].as_str() {
            break token.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no token: {result}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(!token.is_empty());
    let depth = h
        .account()
        .queue_depth(&app.spec.workers[0].queue)
        .await
        .expect("the queue");
    assert_eq!(depth.approximate, 0, "the worker drained its queue");
    drop((web, worker));
    h.operator.assert_no_forbidden();
}
