//! The product in its containers on the real node: the chart's operator in its pod, and the
//! example app's roles as pods of the reference app's image, with storage on an Azurite inside
//! the cluster's network namespace. Nothing here stands in for the kubelet: the pods' env,
//! Secrets, ConfigMap volumes, probes, signals and securityContext are the kubelet's and
//! runc's own.

use std::time::{Duration, Instant};

use cqrs_operator::crd::CqrsApp;
use cqrs_storage::account::{RetrySettings, StorageAccount};
use cqrs_storage::azurite::TestAzurite;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::operator::{Operator, app_image, install_chart, storage_secret};
use crate::support::{TestNamespace, cluster, ctr, in_netns, ok, root, run, wait_for};

/// The kwok node's pods never run; the real node is the one labelled by the tooling.
fn real_node() -> String {
    ok(cluster().kubectl().args([
        "get",
        "nodes",
        "-l",
        "cqrs.dev/node=real",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]))
}

/// The host pid of `pod`'s first container (its task in containerd).
fn container_pid(ns: &TestNamespace, pod: &str) -> u32 {
    let id = ok(ns.kubectl().args([
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]));
    let id = id.trim().trim_start_matches("containerd://").to_owned();
    let tasks = ok(ctr().args(["tasks", "ls"]));
    tasks
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no task {id} in `ctr tasks ls`:\n{tasks}"))
}

/// A field of `/proc/<pid>/status` (`Uid`, `CapEff`, `NoNewPrivs`).
fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The Lease's holder in `ns`.
fn lease_holder(ns: &TestNamespace) -> String {
    ok(ns.kubectl().args([
        "get",
        "lease",
        "cqrs-operator-leader",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]))
}

#[tokio::test]
async fn the_charts_operator_runs_in_its_pod_with_its_identity_and_a_new_pod_takes_over() {
    let ns = TestNamespace::create("pods-operator");
    let release = install_chart(&ns, &[]);
    let operator = Operator::of(&ns, &release);
    let pod = operator.ready_pod();

    // Running and Ready through its probes, on the real node, from the image the tooling built.
    let status: Value =
        serde_json::from_str(&ok(ns.kubectl().args(["get", "pod", &pod, "-o", "json"])))
            .expect("JSON");
    assert_eq!(status["spec"]["nodeName"], real_node().as_str());
    assert_eq!(status["status"]["phase"], "Running");
    let container = &status["status"]["containerStatuses"][0];
    assert_eq!(container["ready"], true);
    assert_eq!(
        container["image"],
        crate::operator::operator_image().as_str(),
        "the chart's default image"
    );

    // In-cluster config from the mounted token: it leads under the pod's name.
    wait_for("the pod to hold the Lease", Duration::from_secs(60), || {
        (lease_holder(&ns) == pod).then_some(())
    });

    // The securityContext as runc enforces it: uid 65532, no capabilities, no new privileges,
    // a read-only root file system.
    let pid = container_pid(&ns, &pod);
    assert_eq!(
        proc_status(pid, "Uid").split_whitespace().next(),
        Some("65532")
    );
    assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root_mount = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("a root mount");
    assert!(
        root_mount
            .split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "the root file system is mounted read-only: {root_mount}"
    );

    // JSON logs, and no request the chart's RBAC refused.
    let logs = ok(ns.kubectl().args(["logs", &pod]));
    assert!(!logs.trim().is_empty());
    for line in logs.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not a JSON log line: {line}"
        );
    }
    operator.assert_no_forbidden();

    // The pod deleted as a node failure would: the ReplicaSet's next pod takes the Lease.
    let killed = Instant::now();
    operator.kill(&pod);
    let next = wait_for(
        "a new operator pod to lead",
        Duration::from_secs(120),
        || {
            let holder = lease_holder(&ns);
            (holder != pod && !holder.is_empty()).then_some(holder)
        },
    );
    eprintln!(
        "measured: operator pod deleted to the next pod holding the Lease in {:.1} s (lease 15 s)",
        killed.elapsed().as_secs_f64()
    );
    assert_ne!(next, pod);
    operator.assert_no_forbidden();
}

/// The example app (`examples/pieshop-azurite.yaml`) as applied to a cluster: its images are the
/// node's, its Secret names an Azurite the pods reach, and its public blob endpoint is that
/// Azurite's; roles scale faster than the example's so the test is short.
fn example_app(ns: &str, azurite: &TestAzurite) -> CqrsApp {
    let text =
        std::fs::read_to_string(root().join("examples/pieshop-azurite.yaml")).expect("the example");
    let yaml = text
        .split("\n---")
        .find(|doc| doc.contains("kind: CqrsApp"))
        .expect("a CqrsApp in the example");
    let mut app: CqrsApp = serde_yaml::from_str(yaml).expect("the example parses");
    app.metadata.namespace = Some(ns.to_owned());
    app.spec.storage.public_blob_endpoint = Some(
        azurite
            .connection_string
            .blob_endpoint
            .to_string()
            .trim_end_matches('/')
            .to_owned(),
    );
    let image = app_image();
    if let Some(web) = app.spec.web.as_mut() {
        web.image = image.clone();
    }
    for worker in &mut app.spec.workers {
        worker.image = image.clone();
        worker.scaling.cooldown_period = 10;
        worker.scaling.scale_down.stabilization_window_seconds = Some(5);
    }
    app
}

/// Polls a JSON document at `url` until `done` holds, for at most `limit`.
async fn poll_json(
    http: &reqwest::Client,
    url: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let body: Option<Value> = match http.get(url).send().await {
            Ok(r) => Some(r.json().await.unwrap_or_default()),
            Err(_) => None,
        };
        if let Some(body) = body.filter(|b| done(b)) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} polling {url}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Running pods of a role, and the Deployment's replicas.
fn role_state(ns: &TestNamespace, component: &str) -> (usize, i64) {
    let phases = ok(ns.kubectl().args([
        "get",
        "pods",
        "-l",
        &format!("cqrs.dev/component={component}"),
        "-o",
        "jsonpath={range .items[*]}{.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]));
    let running = phases
        .lines()
        .filter(|l| l.split_whitespace().collect::<Vec<_>>() == ["Running"])
        .count();
    let replicas = run(ns.kubectl().args([
        "get",
        "deployment",
        &format!("pieshop-{component}"),
        "-o",
        "jsonpath={.spec.replicas}",
    ]));
    let replicas = String::from_utf8_lossy(&replicas.stdout)
        .trim()
        .parse()
        .unwrap_or(-1);
    (running, replicas)
}

/// The ClusterIP of the web role's Service.
fn web_service(ns: &TestNamespace) -> String {
    let ip = ok(ns.kubectl().args([
        "get",
        "service",
        "pieshop-web",
        "-o",
        "jsonpath={.spec.clusterIP}:{.spec.ports[0].port}",
    ]));
    format!("http://{}", ip.trim())
}

/// POSTs `n` registrations through the web Service, 16 at a time (from inside the node's
/// namespace, so through kube-proxy's rules); returns their result URLs.
async fn register(base: String, from: usize, n: usize) -> Vec<String> {
    use futures::StreamExt as _;
    in_netns(async move || {
        let http = reqwest::Client::new();
        futures::stream::iter(from..from + n)
            .map(|i| {
                let (http, base) = (http.clone(), base.clone());
                async move {
                    let accepted = http
                        .post(format!("{base}/api/registrations"))
                        .json(&json!({
                            "firstName": "Ada", "lastName": format!("Pod{i}"),
                            "email": format!("ada{i}@example.com"), "dateOfBirth": "1990-12-10"
                        }))
                        .send()
                        .await
                        .expect("the web Service answers");
                    assert_eq!(accepted.status(), 202, "registration {i}");
                    let body: Value = accepted.json().await.expect("JSON");
                    body["resultUrl"].as_str().expect("a result URL").to_owned()
                }
            })
            .buffered(16)
            .collect::<Vec<_>>()
            .await
    })
    .await
}

/// Waits until every result blob holds a token; returns how many distinct tokens there are.
async fn tokens(urls: &[String], limit: Duration) -> usize {
    let http = reqwest::Client::new();
    let mut seen = std::collections::BTreeSet::new();
    for url in urls {
        let body = poll_json(&http, url, limit, |b| b["registrationToken"].is_string()).await;
        seen.insert(
            body["registrationToken"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    seen.len()
}

/// Samples the registrar while its backlog drains: the most replicas asked for, when the first
/// pod ran, and the pod-seconds spent.
struct Drain {
    most: i64,
    deepest: u64,
    first_running: Option<Duration>,
    pod_seconds: f64,
}

async fn watch_drain(
    ns: &TestNamespace,
    account: &StorageAccount,
    queue: &str,
    limit: Duration,
    posted: impl Fn() -> bool,
) -> (Drain, Duration) {
    let started = Instant::now();
    let mut drain = Drain {
        most: 0,
        deepest: 0,
        first_running: None,
        pod_seconds: 0.0,
    };
    let mut last = Instant::now();
    loop {
        let (running, replicas) = role_state(ns, "registrar");
        let now = Instant::now();
        drain.pod_seconds += running as f64 * (now - last).as_secs_f64();
        last = now;
        drain.most = drain.most.max(replicas);
        if running > 0 && drain.first_running.is_none() {
            drain.first_running = Some(started.elapsed());
        }
        let depth = account.queue_depth(queue).await.expect("the queue");
        drain.deepest = drain.deepest.max(depth.approximate);
        if depth.approximate == 0 && drain.first_running.is_some() && posted() {
            return (drain, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "the backlog did not drain in {limit:?} ({running} pods running, {replicas} asked for, depth {})",
            depth.approximate
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn the_example_app_runs_as_pods_serves_through_its_service_and_scales_its_workers() {
    let ns = TestNamespace::create("pods-app");
    let release = install_chart(&ns, &[]);
    let operator = Operator::of(&ns, &release);
    // A private Azurite, so the example's own queue and container names are this test's.
    let azurite = TestAzurite::private().await;
    let account = StorageAccount::from_connection_string(
        &azurite.connection_string,
        RetrySettings::default(),
    )
    .expect("an account");
    storage_secret(
        &ns,
        "pieshop-storage",
        &azurite.connection_string.to_connection_string(),
    );
    let client = cluster().client().await;
    let apps: Api<CqrsApp> = Api::namespaced(client.clone(), &ns.name);
    apps.create(&PostParams::default(), &example_app(&ns.name, &azurite))
        .await
        .expect("the example is applied");
    ok(ns.kubectl().args([
        "wait",
        "--for=condition=Ready",
        "cqrsapp/pieshop",
        "--timeout=180s",
    ]));
    wait_for("the web pod to be Ready", Duration::from_secs(120), || {
        let ready = ok(ns.kubectl().args([
            "get",
            "pods",
            "-l",
            "cqrs.dev/component=web",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ]));
        (ready.trim() == "True").then_some(())
    });
    let (running, replicas) = role_state(&ns, "registrar");
    assert_eq!((running, replicas), (0, 0), "the registrar starts at zero");

    // kube-proxy programs the Service's endpoint a moment after the pod is Ready.
    let base = web_service(&ns);
    in_netns({
        let base = base.clone();
        async move || {
            let http = reqwest::Client::new();
            poll_json(
                &http,
                &format!("{base}/healthz"),
                Duration::from_secs(60),
                |_| true,
            )
            .await
        }
    })
    .await;

    // A registration through the Service gets its token from a worker pod started for it.
    let backlog_at = Instant::now();
    let first = register(base.clone(), 0, 1).await;
    assert_eq!(tokens(&first, Duration::from_secs(120)).await, 1);
    let to_token = backlog_at.elapsed();

    // A scanner command through the Service reaches the dashboard's read model.
    let dashboard = in_netns({
        let base = base.clone();
        async move || {
            let http = reqwest::Client::new();
            let accepted = http
                .post(format!("{base}/api/inventory/adjustments"))
                .bearer_auth("dev-scanner-key")
                .json(&json!({"commandId": "scan-1", "location": "shop", "item": "pork pie", "delta": 7}))
                .send()
                .await
                .expect("the web Service answers");
            assert_eq!(accepted.status(), 202);
            poll_json(
                &http,
                &format!("{base}/api/inventory/locations/shop"),
                Duration::from_secs(120),
                |model| model.to_string().contains("pork pie"),
            )
            .await
        }
    })
    .await;
    assert!(dashboard.to_string().contains('7'), "{dashboard}");

    // Back to zero after the cooldown, then a backlog: 0 -> N, drained by real containers.
    wait_for("the registrar back at 0", Duration::from_secs(120), || {
        (role_state(&ns, "registrar") == (0, 0)).then_some(())
    });
    // Posted while the registrar is watched, so its pod-seconds cover the whole drain.
    let posting = tokio::spawn(register(base.clone(), 1, 150));
    let (drain, drained_in) = watch_drain(
        &ns,
        &account,
        "registrations",
        Duration::from_secs(240),
        || posting.is_finished(),
    )
    .await;
    let backlog = posting.await.expect("the backlog was posted");
    assert_eq!(
        tokens(&backlog, Duration::from_secs(120)).await,
        150,
        "one token each"
    );
    assert!(
        drain.most > 1,
        "a backlog of 150 asks for more than one pod"
    );
    eprintln!(
        "measured: a registration through the Service to its token, from 0 worker pods: {:.1} s",
        to_token.as_secs_f64()
    );
    eprintln!(
        "measured: backlog of 150 (deepest {}) to the first worker pod Running: {:.1} s; drained {:.1} s after that by up to {} pods ({:.1} pod-seconds Running)",
        drain.deepest,
        drain.first_running.unwrap_or_default().as_secs_f64(),
        (drained_in - drain.first_running.unwrap_or_default()).as_secs_f64(),
        drain.most,
        drain.pod_seconds
    );
    let empty = Instant::now();
    wait_for("the registrar back at 0", Duration::from_secs(120), || {
        (role_state(&ns, "registrar") == (0, 0)).then_some(())
    });
    eprintln!(
        "measured: empty queue to 0 worker pods in {:.1} s (cooldown 10 s, window 5 s)",
        empty.elapsed().as_secs_f64()
    );

    // A busy stocker pod deleted the way a scale-in deletes it: it finishes the stock take in
    // hand within its grace period, and the stock take counts once.
    busy_worker_finishes_its_message(&ns, &base, &account).await;

    // The operator's pod deleted: the next pod leads and scales the next backlog.
    let pod = operator.ready_pod();
    operator.kill(&pod);
    wait_for(
        "a new operator pod to lead",
        Duration::from_secs(120),
        || {
            let holder = lease_holder(&ns);
            (holder != pod && !holder.is_empty()).then_some(())
        },
    );
    let after = register(base.clone(), 200, 60).await;
    assert_eq!(tokens(&after, Duration::from_secs(180)).await, 60);
    let depth = account
        .queue_depth("registrations")
        .await
        .expect("the queue");
    assert_eq!(depth.approximate, 0, "nothing left behind");
    let poisoned = account
        .queue_depth("registrations-poison")
        .await
        .map(|d| d.approximate)
        .unwrap_or(0);
    assert_eq!(poisoned, 0, "nothing poisoned");
    operator.assert_no_forbidden();
}

/// Uploads a stock take big enough to keep a worker busy for a while, deletes the pod that has
/// it in hand (gracefully, as a scale-in does), and checks it was applied exactly once by that
/// pod.
async fn busy_worker_finishes_its_message(
    ns: &TestNamespace,
    base: &str,
    account: &StorageAccount,
) {
    let lines: usize = 100_000;
    let mut csv = String::from("location,item,quantity\n");
    for i in 0..lines {
        csv.push_str(&format!("van-{},pie-{i},1\n", i % 10));
    }
    let result_url = in_netns({
        let base = base.to_owned();
        async move || {
            let accepted = reqwest::Client::new()
                .post(format!(
                    "{base}/api/inventory/stocktakes?stocktakeId=busy-1"
                ))
                .bearer_auth("dev-scanner-key")
                .header("content-type", "text/csv")
                .body(csv)
                .send()
                .await
                .expect("the web Service answers");
            assert_eq!(accepted.status(), 202);
            let body: Value = accepted.json().await.expect("JSON");
            body["resultUrl"].as_str().expect("a result URL").to_owned()
        }
    })
    .await;
    // In hand: the queue counts it, but it is invisible (a peek sees nothing).
    let busy = loop {
        let depth = account.queue_depth("inventory").await.expect("the queue");
        let running = ok(ns.kubectl().args([
            "get",
            "pods",
            "-l",
            "cqrs.dev/component=stocker",
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]));
        if depth.approximate >= 1 && depth.visible == Some(0) && !running.trim().is_empty() {
            break running
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>();
        }
        let result: Value = match reqwest::get(&result_url).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        assert!(
            result["status"] != "applied",
            "the stock take was applied before a pod could be caught with it in hand: {result}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deleted = Instant::now();
    for pod in &busy {
        ok(ns.kubectl().args(["delete", "pod", pod, "--wait=false"]));
    }
    let http = reqwest::Client::new();
    let result = poll_json(&http, &result_url, Duration::from_secs(180), |r| {
        r["status"] == "applied"
    })
    .await;
    assert_eq!(result["linesApplied"], lines, "{result}");
    eprintln!(
        "measured: a busy worker pod deleted mid stock take ({lines} lines) finished it {:.1} s later",
        deleted.elapsed().as_secs_f64()
    );
    // Deleted by the pod that had it: no redelivery, nothing poisoned, counted once. The pod
    // writes the result blob before it deletes the message, so the queue may still count it
    // for a moment; a message left to be redelivered would stay counted for the visibility
    // timeout (30 s from its last renewal) and more, so 15 s tells the two apart.
    let mut depth = account.queue_depth("inventory").await.expect("the queue");
    let until = Instant::now() + Duration::from_secs(15);
    while depth.approximate > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        depth = account.queue_depth("inventory").await.expect("the queue");
    }
    assert_eq!(
        depth.approximate, 0,
        "the message was deleted by the pod that had it, not left to be redelivered"
    );
    let poisoned = account
        .queue_depth("inventory-poison")
        .await
        .map(|d| d.approximate)
        .unwrap_or(0);
    assert_eq!(poisoned, 0);
    let base = base.to_owned();
    let counted = in_netns(async move || {
        let http = reqwest::Client::new();
        // The vans' totals, from the first page of locations named van-*.
        let sum = |model: &Value| -> i64 {
            model["locations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| {
                    l["location"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("van-"))
                })
                .filter_map(|l| l["quantity"].as_i64())
                .sum()
        };
        let model = poll_json(
            &http,
            &format!("{base}/api/inventory?q=van-&pageSize=200"),
            Duration::from_secs(120),
            |m| sum(m) >= lines as i64,
        )
        .await;
        sum(&model)
    })
    .await;
    assert_eq!(counted, lines as i64, "every line counted once");
    wait_for(
        "the deleted pods to be gone",
        Duration::from_secs(120),
        || {
            let left =
                ok(ns
                    .kubectl()
                    .args(["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"]));
            busy.iter()
                .all(|p| !left.contains(p.as_str()))
                .then_some(())
        },
    );
}
