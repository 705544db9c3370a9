//! Reconcile scenarios against the in-memory API ([`fake_api`]) with an in-memory storage
//! connector, where they pin down exact calls or inject failures. Everything else the operator
//! does is tested on the real control plane (`operator/tests/cluster/`), each scenario once,
//! and the probe loop on a real Azurite queue in `operator/tests/probe_loop.rs`.

mod fake_api;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cqrs_storage::queues::Ensured;
use cqrs_storage::{CorsRule, Provisioner, QueueDepth, QueueProbe};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};

use super::Context;
use super::reconcile::{FINALIZER, error_policy, reconcile};
use super::storage::{Connected, StorageConnector, StorageProblem};
use crate::crd::{CqrsApp, DeletionPolicy, SecretKeyRef};
use crate::metrics::Metrics;
use crate::plan::StorageAccess;
use crate::testing::app;
use fake_api::FakeApi;

const APP_PATH: &str = "/apis/cqrs.dev/v1alpha1/namespaces/shop/cqrsapps/pieshop";
const APP_UID: &str = "4f1c2a8e-0000-4000-8000-000000000001";

/// Storage in memory: records provisioning calls, answers probes with a set depth.
#[derive(Default)]
struct FakeStorage {
    calls: Mutex<Vec<String>>,
    connect_problem: Mutex<Option<StorageProblem>>,
    depth: AtomicU64,
    /// Messages in every poison queue.
    poison_depth: AtomicU64,
    /// The account's blob-service CORS rules.
    cors: Mutex<Vec<CorsRule>>,
}

impl FakeStorage {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

struct FakeProvisioner(Arc<FakeStorage>);

#[async_trait]
impl Provisioner for FakeProvisioner {
    async fn ensure_queue(&self, name: &str) -> Result<Ensured, cqrs_storage::Error> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(format!("ensure queue {name}"));
        Ok(Ensured::Created)
    }
    async fn ensure_container(&self, name: &str) -> Result<Ensured, cqrs_storage::Error> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(format!("ensure container {name}"));
        Ok(Ensured::Existed)
    }
    async fn read_blob_cors(&self) -> Result<Vec<CorsRule>, cqrs_storage::Error> {
        self.0.calls.lock().unwrap().push("cors read".into());
        Ok(self.0.cors.lock().unwrap().clone())
    }
    async fn write_blob_cors(&self, rules: Vec<CorsRule>) -> Result<(), cqrs_storage::Error> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(format!("cors write {}", rules.len()));
        *self.0.cors.lock().unwrap() = rules;
        Ok(())
    }
    async fn delete_queue(&self, name: &str) -> Result<bool, cqrs_storage::Error> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(format!("delete queue {name}"));
        Ok(true)
    }
    async fn delete_container(&self, name: &str) -> Result<bool, cqrs_storage::Error> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(format!("delete container {name}"));
        Ok(true)
    }
}

#[async_trait]
impl QueueProbe for FakeProvisioner {
    async fn queue_depth(&self, name: &str) -> Result<QueueDepth, cqrs_storage::Error> {
        let n = if name.ends_with(cqrs_storage::queues::POISON_SUFFIX) {
            self.0.poison_depth.load(Ordering::SeqCst)
        } else {
            self.0.depth.load(Ordering::SeqCst)
        };
        Ok(QueueDepth {
            approximate: n,
            visible: Some(n),
        })
    }

    async fn redrive(
        &self,
        queue: &str,
        max: usize,
        _records: Option<&str>,
    ) -> Result<cqrs_storage::poison::Redriven, cqrs_storage::Error> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(format!("redrive {queue} {max}"));
        let n = self.0.poison_depth.swap(0, Ordering::SeqCst);
        Ok(cqrs_storage::poison::Redriven {
            moved: (0..n).map(|i| format!("m{i}")).collect(),
            not_deleted: vec![],
        })
    }
}

struct FakeConnector(Arc<FakeStorage>);

#[async_trait]
impl StorageConnector for FakeConnector {
    async fn connect(&self, _: &CqrsApp) -> Result<Connected, StorageProblem> {
        if let Some(problem) = self.0.connect_problem.lock().unwrap().clone() {
            return Err(problem);
        }
        let fake = Arc::new(FakeProvisioner(self.0.clone()));
        Ok(Connected {
            provisioner: fake.clone(),
            probe: fake,
            probe_id: "fake".into(),
            access: StorageAccess::SecretRef(SecretKeyRef {
                name: "pieshop-storage".into(),
                key: "connectionString".into(),
            }),
        })
    }
}

struct Scenario {
    api: FakeApi,
    storage: Arc<FakeStorage>,
    ctx: Arc<Context>,
}

fn scenario() -> Scenario {
    let (client, api) = FakeApi::start();
    let storage = Arc::new(FakeStorage::default());
    let reporter = Reporter {
        controller: "cqrs-operator".into(),
        instance: Some("test".into()),
    };
    let ctx = Context::new(
        client,
        Arc::new(FakeConnector(storage.clone())),
        Arc::new(Metrics::new()),
        reporter,
    );
    Scenario {
        api,
        storage,
        ctx: Arc::new(ctx),
    }
}

/// The fixture app as stored: with the finalizer already added.
fn stored_app() -> CqrsApp {
    let mut a = app();
    a.metadata.finalizers = Some(vec![FINALIZER.into()]);
    a
}

impl Scenario {
    async fn reconcile(&self, app: CqrsApp) -> Result<Action, crate::Error> {
        self.api.put(APP_PATH, serde_json::to_value(&app).unwrap());
        reconcile(Arc::new(app), self.ctx.clone()).await
    }

    fn object(&self, path: &str) -> Value {
        self.api
            .get(path)
            .unwrap_or_else(|| panic!("{path} was not written"))
    }

    /// Calls other than the probe loops' scale reads/writes (they run concurrently).
    fn lines(&self) -> Vec<String> {
        self.api
            .call_lines()
            .into_iter()
            .filter(|l| !l.ends_with("/scale"))
            .collect()
    }
}

fn env(deployment: &Value) -> Vec<Value> {
    deployment
        .pointer("/spec/template/spec/containers/0/env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap()
}

fn env_value(deployment: &Value, name: &str) -> Option<String> {
    env(deployment)
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

#[tokio::test]
async fn a_new_app_with_filled_caches_reads_no_deployment_and_lists_only_configmaps() {
    use kube::runtime::{reflector, watcher};
    let mut s = scenario();
    let (deployments, mut deployment_writer) = reflector::store::<Deployment>();
    let (services, mut service_writer) = reflector::store::<Service>();
    // The watches' first lists are in, and hold none of this app's children.
    deployment_writer.apply_watcher_event(&watcher::Event::Init);
    deployment_writer.apply_watcher_event(&watcher::Event::InitDone);
    service_writer.apply_watcher_event(&watcher::Event::Init);
    service_writer.apply_watcher_event(&watcher::Event::InitDone);
    let ctx = Arc::try_unwrap(s.ctx)
        .unwrap()
        .with_stores(deployments, services);
    s.ctx = Arc::new(ctx);
    s.reconcile(stored_app()).await.unwrap();
    let reads: Vec<String> = s
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("GET") && !l.contains("/secrets/"))
        .collect();
    assert_eq!(
        reads,
        ["GET /api/v1/namespaces/shop/configmaps".to_string()],
        "the caches answer for Deployments and Services"
    );
    // Its Deployments were created with their replicas handed to the scaler all the same.
    let registrar = s.object("/apis/apps/v1/namespaces/shop/deployments/pieshop-registrar");
    assert!(registrar.pointer("/spec/replicas").is_some(), "{registrar}");
}

#[tokio::test]
async fn a_resync_of_an_unchanged_app_applies_and_lists_nothing() {
    use kube::runtime::{reflector, watcher};
    let mut s = scenario();
    let (deployments, mut deployment_writer) = reflector::store::<Deployment>();
    let (services, mut service_writer) = reflector::store::<Service>();
    let ctx = Arc::try_unwrap(s.ctx)
        .unwrap()
        .with_stores(deployments, services);
    s.ctx = Arc::new(ctx);
    s.reconcile(stored_app()).await.unwrap();
    // The watches deliver what the API server now holds.
    for name in ["pieshop-registrar", "pieshop-stocker", "pieshop-web"] {
        let d: Deployment = serde_json::from_value(
            s.object(&format!("/apis/apps/v1/namespaces/shop/deployments/{name}")),
        )
        .unwrap();
        deployment_writer.apply_watcher_event(&watcher::Event::Apply(d));
    }
    let svc: Service =
        serde_json::from_value(s.object("/api/v1/namespaces/shop/services/pieshop-web")).unwrap();
    service_writer.apply_watcher_event(&watcher::Event::Apply(svc));
    let before = s.lines().len();
    s.reconcile(stored_app()).await.unwrap();
    let again: Vec<String> = s.lines()[before..]
        .iter()
        .filter(|l| !l.ends_with("/status"))
        .cloned()
        .collect();
    assert_eq!(
        again,
        Vec::<String>::new(),
        "a resync sends no apply, GET or LIST"
    );
}

#[tokio::test]
async fn creates_children_owned_by_the_app_with_the_environment_contract() {
    let s = scenario();
    s.storage.depth.store(7, Ordering::SeqCst);
    let action = s.reconcile(stored_app()).await.unwrap();
    assert_ne!(action, Action::await_change(), "a healthy app is resynced");

    assert_eq!(
        s.lines(),
        [
            "PATCH /api/v1/namespaces/shop/serviceaccounts/pieshop",
            "GET /apis/apps/v1/namespaces/shop/deployments/pieshop-registrar",
            "PATCH /apis/apps/v1/namespaces/shop/deployments/pieshop-registrar",
            "GET /apis/apps/v1/namespaces/shop/deployments/pieshop-stocker",
            "PATCH /apis/apps/v1/namespaces/shop/deployments/pieshop-stocker",
            "PATCH /apis/apps/v1/namespaces/shop/deployments/pieshop-web",
            "PATCH /api/v1/namespaces/shop/services/pieshop-web",
            "GET /apis/apps/v1/namespaces/shop/deployments",
            "GET /api/v1/namespaces/shop/services",
            "GET /api/v1/namespaces/shop/configmaps",
            "PATCH /apis/cqrs.dev/v1alpha1/namespaces/shop/cqrsapps/pieshop/status",
        ]
    );
    assert!(
        !s.api
            .calls()
            .iter()
            .any(|c| c.query.contains("fieldManager=cqrs-operator-scaler")),
        "a new Deployment keeps its replicas with the reconciler until it is applied again"
    );
    for call in s
        .api
        .calls()
        .iter()
        .filter(|c| c.method == "PATCH" && !c.path.ends_with("/scale"))
    {
        assert_eq!(
            call.content_type,
            "application/apply-patch+yaml",
            "{}",
            call.line()
        );
        assert!(
            call.query.contains("fieldManager=cqrs-operator") && call.query.contains("force=true"),
            "{}: {}",
            call.line(),
            call.query
        );
    }

    let registrar = s.object("/apis/apps/v1/namespaces/shop/deployments/pieshop-registrar");
    assert_eq!(registrar["metadata"]["ownerReferences"][0]["uid"], APP_UID);
    assert_eq!(
        registrar["metadata"]["ownerReferences"][0]["controller"],
        true
    );
    assert_eq!(
        registrar["spec"]["replicas"], 0,
        "a new worker starts at minReplicas"
    );
    assert_eq!(
        env_value(&registrar, "CQRS_QUEUE").as_deref(),
        Some("registrations")
    );
    assert_eq!(
        env_value(&registrar, "CQRS_POISON_QUEUE").as_deref(),
        Some("registrations-poison")
    );
    let cs = env(&registrar)
        .into_iter()
        .find(|e| e["name"] == "CQRS_STORAGE_CONNECTION_STRING")
        .unwrap();
    assert_eq!(
        cs["valueFrom"]["secretKeyRef"],
        json!({"name": "pieshop-storage", "key": "connectionString", "optional": false})
    );
    let web = s.object("/apis/apps/v1/namespaces/shop/deployments/pieshop-web");
    assert_eq!(env_value(&web, "CQRS_ROLE").as_deref(), Some("web"));
    assert_eq!(env_value(&web, "SCANNER_KEY").as_deref(), Some("k"));
    assert_eq!(
        s.object("/api/v1/namespaces/shop/services/pieshop-web")["metadata"]["ownerReferences"][0]
            ["uid"],
        APP_UID
    );

    assert_eq!(
        s.storage.calls(),
        [
            "ensure queue registrations",
            "ensure queue registrations-poison",
            "ensure queue inventory",
            "ensure queue inventory-poison",
            "ensure container results",
            "ensure container readmodels",
            "ensure container pieshop-claims",
            "cors read",
            "cors write 1",
        ]
    );
    let events = s.api.events();
    assert!(
        events.iter().any(|(t, r, note)| t == "Normal"
            && r == "Provisioned"
            && note.contains("queue/registrations-poison")),
        "{events:?}"
    );

    let status = &s.object(APP_PATH)["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "StorageReady")["reason"], "Provisioned");
    assert_eq!(
        condition(status, "WebReady")["message"],
        "1/1 web replica(s) available"
    );
    assert_eq!(status["webEndpoint"], "http://pieshop-web.shop.svc:80");
    assert_eq!(status["queues"][0]["name"], "registrations");
    assert_eq!(status["queues"][0]["approximateMessageCount"], 7);
    assert_eq!(status["totalQueueDepth"], 14);
    assert_eq!(status["workers"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_edit_before_the_first_scale_hands_replicas_to_the_scaler_before_applying() {
    let s = scenario();
    s.reconcile(stored_app()).await.unwrap();
    let before = s.api.calls().len();
    let mut edited = stored_app();
    edited.metadata.generation = Some(2);
    edited.spec.workers[0]
        .env
        .push(k8s_openapi::api::core::v1::EnvVar {
            name: "GREETING".into(),
            value: Some("hello".into()),
            ..Default::default()
        });
    s.reconcile(edited).await.unwrap();
    let registrar = "/apis/apps/v1/namespaces/shop/deployments/pieshop-registrar";
    let writes: Vec<(String, bool)> = s.api.calls()[before..]
        .iter()
        .filter(|c| c.method == "PATCH" && c.path == registrar)
        .map(|c| {
            let claim = c.query.contains("fieldManager=cqrs-operator-scaler");
            if claim {
                assert!(c.query.contains("force=true"), "{}", c.query);
                assert_eq!(
                    c.body.as_ref().unwrap()["spec"],
                    json!({"replicas": 0}),
                    "only spec.replicas, as it is"
                );
            }
            (c.line(), claim)
        })
        .collect();
    assert_eq!(
        writes.iter().map(|(_, claim)| *claim).collect::<Vec<_>>(),
        [true, false],
        "the hand-over, then the apply: {writes:?}"
    );
    let deployment = s.object(registrar);
    assert_eq!(deployment["spec"]["replicas"], 0, "replicas kept");
    assert_eq!(env_value(&deployment, "GREETING").as_deref(), Some("hello"));
}

#[tokio::test]
async fn a_pass_on_a_cached_app_older_than_its_status_write_does_not_write_it_again() {
    let s = scenario();
    let writes = || {
        s.lines()
            .iter()
            .filter(|l| l.ends_with("/pieshop/status"))
            .count()
    };
    s.reconcile(stored_app()).await.unwrap();
    // The cache still holds the app as it was before the status write.
    s.reconcile(stored_app()).await.unwrap();
    assert_eq!(writes(), 1);
    // A status that did change is written.
    s.storage.depth.store(5, Ordering::SeqCst);
    s.reconcile(stored_app()).await.unwrap();
    assert_eq!(writes(), 2);
}

#[tokio::test]
async fn a_second_pass_writes_the_same_objects_and_no_new_events() {
    let s = scenario();
    s.reconcile(stored_app()).await.unwrap();
    let mut app = stored_app();
    app.status = serde_json::from_value(s.object(APP_PATH)["status"].clone()).unwrap();
    let before = s.api.events().len();
    s.reconcile(app).await.unwrap();
    let new_events: Vec<_> = s.api.events().into_iter().skip(before).collect();
    assert!(
        new_events
            .iter()
            .all(|(_, r, _)| r != "Ready" && r != "InvalidSpec"),
        "{new_events:?}"
    );
}

#[tokio::test]
async fn an_invalid_spec_gets_a_condition_and_an_event_and_nothing_is_created() {
    let s = scenario();
    let mut app = stored_app();
    app.spec.workers[0].queue = "orders".into();
    let action = s.reconcile(app).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(
        s.lines(),
        ["PATCH /apis/cqrs.dev/v1alpha1/namespaces/shop/cqrsapps/pieshop/status"]
    );
    assert!(s.storage.calls().is_empty(), "no storage is touched");
    let status = &s.object(APP_PATH)["status"];
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.workers[0].queue: \"orders\" is not one of spec.queues[].name"),
        "{ready}"
    );
    let events = s.api.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Warning", "InvalidSpec")
    );
    assert!(events[0].2.contains("spec.workers[0].queue"));
}

#[tokio::test]
async fn an_unchanged_invalid_spec_does_not_repeat_its_event() {
    let s = scenario();
    let mut app = stored_app();
    app.spec.workers[0].queue = "orders".into();
    s.reconcile(app.clone()).await.unwrap();
    app.status = serde_json::from_value(s.object(APP_PATH)["status"].clone()).unwrap();
    s.reconcile(app).await.unwrap();
    assert_eq!(s.api.events().len(), 1);
}

#[tokio::test]
async fn a_missing_secret_is_reported_and_retried_with_growing_backoff() {
    let s = scenario();
    *s.storage.connect_problem.lock().unwrap() = Some(StorageProblem {
        reason: super::storage::StorageFailure::SecretNotFound,
        message: "Secret shop/pieshop-storage (spec.storage.connectionSecretRef) does not exist"
            .into(),
    });
    let app = stored_app();
    let err = s.reconcile(app.clone()).await.unwrap_err();
    assert_eq!(err.reason(), "SecretNotFound");
    let status = &s.object(APP_PATH)["status"];
    assert_eq!(
        condition(status, "StorageReady")["reason"],
        "SecretNotFound"
    );
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert!(
        s.lines().iter().all(|l| !l.contains("deployments")),
        "no roles without storage"
    );
    assert!(
        s.api
            .events()
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "SecretNotFound")
    );

    let app = Arc::new(app);
    assert_eq!(
        error_policy(app.clone(), &err, s.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(app.clone(), &err, s.ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(
        error_policy(app, &err, s.ctx.clone()),
        Action::requeue(Duration::from_secs(20))
    );
    let metrics = s.ctx.metrics.encode();
    assert!(
        metrics.contains(r#"cqrs_reconcile_errors_total{reason="SecretNotFound"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_new_app_first_gets_the_finalizer() {
    let s = scenario();
    let action = s.reconcile(app()).await.unwrap();
    assert_eq!(action, Action::await_change());
    let calls = s.api.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].line(), format!("PATCH {APP_PATH}"));
    assert!(calls[0].content_type.starts_with("application/json-patch"));
    assert_eq!(
        s.object(APP_PATH)["metadata"]["finalizers"],
        json!([FINALIZER])
    );
    assert!(s.storage.calls().is_empty());
}

fn deleted(policy: DeletionPolicy) -> CqrsApp {
    let mut a = stored_app();
    a.spec.deletion_policy = policy;
    a.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    a
}

#[tokio::test]
async fn deleting_with_delete_removes_queues_poison_queues_and_containers() {
    let s = scenario();
    s.reconcile(stored_app()).await.unwrap();
    s.storage.calls.lock().unwrap().clear();
    s.reconcile(deleted(DeletionPolicy::Delete)).await.unwrap();
    assert_eq!(
        s.storage.calls(),
        [
            "delete queue registrations",
            "delete queue registrations-poison",
            "delete queue inventory",
            "delete queue inventory-poison",
            "delete container results",
            "delete container readmodels",
            "delete container pieshop-claims",
            // its rule goes, read first so others' rules stay
            "cors read",
            "cors write 0",
        ]
    );
    assert_eq!(s.object(APP_PATH)["metadata"]["finalizers"], json!([]));
    assert!(s.api.events().iter().any(|(_, r, _)| r == "StorageDeleted"));
}

#[tokio::test]
async fn children_the_spec_no_longer_asks_for_are_deleted() {
    let s = scenario();
    let stale = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "pieshop-retired", "namespace": "shop", "uid": "u1",
            "labels": {"cqrs.dev/app": "pieshop"},
            "ownerReferences": [{"apiVersion": "cqrs.dev/v1alpha1", "kind": "CqrsApp", "name": "pieshop", "uid": APP_UID, "controller": true}]}
    });
    let foreign = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "pieshop-by-hand", "namespace": "shop", "uid": "u2", "labels": {"cqrs.dev/app": "pieshop"}}
    });
    s.api.put(
        "/apis/apps/v1/namespaces/shop/deployments/pieshop-retired",
        stale,
    );
    s.api.put(
        "/apis/apps/v1/namespaces/shop/deployments/pieshop-by-hand",
        foreign,
    );
    s.reconcile(stored_app()).await.unwrap();
    let deletes: Vec<String> = s
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("DELETE"))
        .collect();
    assert_eq!(
        deletes,
        ["DELETE /apis/apps/v1/namespaces/shop/deployments/pieshop-retired"],
        "objects it does not own are left alone"
    );
}

#[tokio::test]
async fn a_failing_child_apply_is_an_error_naming_the_object() {
    let s = scenario();
    s.api
        .fail_patches("/apis/apps/v1/namespaces/shop/deployments/pieshop-web", 500);
    let err = s.reconcile(stored_app()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot apply Deployment pieshop-web"),
        "{err}"
    );
}

#[tokio::test]
async fn a_growing_poison_queue_is_counted_and_warned_about_once() {
    let s = scenario();
    s.storage.poison_depth.store(3, Ordering::SeqCst);
    s.reconcile(stored_app()).await.unwrap();
    let status = &s.object(APP_PATH)["status"];
    assert_eq!(status["queues"][0]["poisonMessageCount"], 3);
    assert_eq!(status["totalPoisonMessages"], 6, "two queues, 3 each");
    let poisoned: Vec<_> = s
        .api
        .events()
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "MessagesPoisoned")
        .collect();
    assert_eq!(poisoned.len(), 2, "one per queue: {poisoned:?}");
    assert!(
        poisoned[0]
            .2
            .contains("3 new message(s) in registrations-poison")
            && poisoned[0]
                .2
                .contains("cqrs-operator poison list --app pieshop -n shop --queue registrations"),
        "{poisoned:?}"
    );
    let metrics = s.ctx.metrics.encode();
    assert!(
        metrics.contains(
            r#"cqrs_poison_queue_depth{namespace="shop",app="pieshop",queue="inventory"} 3"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_redrive_annotation_moves_the_messages_once_and_is_removed() {
    let s = scenario();
    s.storage.poison_depth.store(2, Ordering::SeqCst);
    let mut a = stored_app();
    a.metadata.annotations = Some(
        [(
            super::redrive::ANNOTATION.to_string(),
            "inventory".to_string(),
        )]
        .into(),
    );
    s.reconcile(a).await.unwrap();
    let calls = s.storage.calls();
    assert!(
        calls.contains(&"redrive inventory 1000".to_string()),
        "{calls:?}"
    );
    let events = s.api.events();
    assert!(
        events.iter().any(|(t, r, note)| t == "Normal"
            && r == "Redriven"
            && note == "moved 2 message(s) from inventory-poison back to inventory"),
        "{events:?}"
    );
    let removed = s
        .api
        .calls()
        .into_iter()
        .find(|c| {
            c.method == "PATCH"
                && c.path.ends_with("/cqrsapps/pieshop")
                && c.body
                    .as_ref()
                    .is_some_and(|b| b["metadata"]["annotations"].is_object())
        })
        .expect("the annotation is removed");
    assert_eq!(
        removed.body.unwrap()["metadata"]["annotations"]["cqrs.dev/redrive"],
        Value::Null
    );

    let mut unknown = stored_app();
    unknown.metadata.annotations =
        Some([(super::redrive::ANNOTATION.to_string(), "nope".to_string())].into());
    s.reconcile(unknown).await.unwrap();
    assert!(
        s.api.events().iter().any(|(t, r, note)| t == "Warning"
            && r == "RedriveFailed"
            && note.contains(
                "\"nope\" names no queue of this app (its queues: registrations, inventory)"
            )),
        "{:?}",
        s.api.events()
    );
}
