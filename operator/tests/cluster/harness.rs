//! One test's world: a namespace of its own with the chart installed (its operator pod running
//! on the real node from the image `cargo xtask images` built), an Azurite inside the cluster's
//! network namespace (where the operator's pod reaches it), and the app the test applies.

use cqrs_operator::crd::CqrsApp;
use cqrs_operator::testing::app;
use cqrs_storage::account::{RetrySettings, StorageAccount};
use cqrs_storage::azurite::TestAzurite;
use std::time::Duration;

use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use crate::operator::{Operator, install_chart, storage_secret};
use crate::support::{TestNamespace, cluster, eventually, ok, wait_for};

/// The Secret the apps' `spec.storage.connectionSecretRef` names.
pub const SECRET: &str = "pieshop-storage";

/// Fields drop in order: the operator stops before its namespace goes.
#[allow(missing_debug_implementations)] // kube::Client has no Debug
pub struct Harness {
    /// The operator (`op-a`) of this namespace.
    pub operator: Operator,
    /// The test's namespace.
    pub ns: TestNamespace,
    /// A client with the admin credentials.
    pub client: kube::Client,
    /// CqrsApps in the namespace.
    pub apps: Api<CqrsApp>,
    /// The storage.
    pub azurite: TestAzurite,
}

impl Harness {
    /// On the run's shared Azurite.
    pub async fn start(prefix: &str) -> Self {
        Self::on(prefix, TestAzurite::start().await).await
    }

    /// On an Azurite of its own, for a test that sets CORS rules (account-wide, at most 5).
    pub async fn start_private(prefix: &str) -> Self {
        Self::on(prefix, TestAzurite::private().await).await
    }

    async fn on(prefix: &str, azurite: TestAzurite) -> Self {
        let ns = TestNamespace::create(prefix);
        let release = install_chart(&ns, &[]);
        let operator = Operator::of(&ns, &release);
        let client = cluster().client().await;
        let apps = Api::namespaced(client.clone(), &ns.name);
        Harness {
            operator,
            ns,
            client,
            apps,
            azurite,
        }
    }

    /// On the shared Azurite with the storage Secret, `customize`d [`test_app`] applied and
    /// Ready.
    pub async fn ready(prefix: &str, customize: impl FnOnce(&mut CqrsApp)) -> (Self, CqrsApp) {
        let h = Self::start(prefix).await;
        h.create_secret();
        let mut app = h.test_app();
        customize(&mut app);
        h.create(&app).await;
        h.wait_ready("shop");
        (h, app)
    }

    /// The Azurite's connection string.
    pub fn connection_string(&self) -> String {
        self.azurite.connection_string.to_connection_string()
    }

    /// Creates the storage Secret with the Azurite's connection string.
    pub fn create_secret(&self) {
        storage_secret(&self.ns, SECRET, &self.connection_string());
    }

    /// Points the storage Secret (created by any means) at `connection_string`.
    pub fn set_connection_string(&self, connection_string: &str) {
        let patch = serde_json::json!({"stringData": {"connectionString": connection_string}});
        ok(self.ns.kubectl().args([
            "patch",
            "secret",
            SECRET,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ]));
    }

    /// Creates `app`.
    pub async fn create(&self, app: &CqrsApp) {
        self.apps
            .create(&PostParams::default(), app)
            .await
            .expect("the app is created");
    }

    /// Waits (`kubectl wait`) until app `name` is Ready.
    pub fn wait_ready(&self, name: &str) {
        ok(self.ns.kubectl().args([
            "wait",
            "--for=condition=Ready",
            &format!("cqrsapp/{name}"),
            "--timeout=120s",
        ]));
    }

    /// Applies an edit of app `shop` (field manager `cqrs-tests`) and waits until the operator
    /// reconciled it (`status.observedGeneration`); returns the new generation.
    pub async fn edit(&self, edited: &CqrsApp) -> Option<i64> {
        let mut edited = edited.clone();
        edited.metadata.managed_fields = None;
        edited.metadata.resource_version = None;
        self.apps
            .patch(
                "shop",
                &PatchParams::apply("cqrs-tests").force(),
                &Patch::Apply(&edited),
            )
            .await
            .expect("the edit is applied");
        let generation = self
            .apps
            .get("shop")
            .await
            .expect("the app")
            .metadata
            .generation;
        eventually(
            "the edit to be reconciled",
            Duration::from_secs(120),
            || async {
                self.apps
                    .get("shop")
                    .await
                    .ok()
                    .and_then(|a| a.status?.observed_generation)
                    == generation
            },
        )
        .await;
        generation
    }

    /// Waits until no object of `kinds` (`deployments,configmaps`) labelled `selector` is
    /// left in the namespace.
    pub fn wait_none_left(&self, what: &str, kinds: &str, selector: &str) {
        wait_for(what, Duration::from_secs(60), || {
            let left = ok(self
                .ns
                .kubectl()
                .args(["get", kinds, "-l", selector, "-o", "name"]));
            left.trim().is_empty().then_some(())
        });
    }

    /// The Azurite account.
    pub fn account(&self) -> StorageAccount {
        StorageAccount::from_connection_string(
            &self.azurite.connection_string,
            RetrySettings::default(),
        )
        .expect("an account")
    }

    /// The baseline app `shop` with queue and container names (claim-check container
    /// included) of this test's own (the Azurite may be shared), the stocker rate limited, no
    /// CORS rule (CORS is account-wide and Azure allows five rules, so only tests on a private
    /// Azurite add one), and every role placed on the kwok node, where its pods are reported
    /// Running without running: these tests are about the operator, not the roles (the
    /// `pods` tests run the roles for real).
    pub fn test_app(&self) -> CqrsApp {
        let suffix = self
            .ns
            .name
            .rsplit('-')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut a = app();
        a.metadata = ObjectMeta {
            name: Some("shop".into()),
            namespace: Some(self.ns.name.clone()),
            ..Default::default()
        };
        a.status = None;
        for (queue, short) in [("registrations", "reg"), ("inventory", "inv")] {
            let name = format!("{short}-{suffix}");
            for q in a.spec.queues.iter_mut().filter(|q| q.name == queue) {
                q.name = name.clone();
            }
            for w in a.spec.workers.iter_mut().filter(|w| w.queue == queue) {
                w.queue = name.clone();
            }
        }
        a.spec.containers[0].name = format!("res-{suffix}");
        a.spec.containers[0].cors = None;
        a.spec.containers[1].name = format!("rm-{suffix}");
        // NB: the default `<app>-claims` would be shared by every test's `shop`.
        a.spec.claim_check = Some(cqrs_operator::crd::ClaimCheckSpec {
            container: Some(format!("claims-{suffix}")),
            threshold_bytes: cqrs_storage::claims::DEFAULT_THRESHOLD_BYTES,
        });
        a.spec.workers[1].max_messages_per_second = Some(10);
        let (selector, tolerations) = on_kwok();
        if let Some(web) = a.spec.web.as_mut() {
            web.node_selector = selector.clone();
            web.tolerations = tolerations.clone();
        }
        for worker in &mut a.spec.workers {
            worker.node_selector = selector.clone();
            worker.tolerations = tolerations.clone();
        }
        a
    }
}

/// A role's placement on the kwok node: its label, and its taint tolerated.
pub fn on_kwok() -> (
    std::collections::BTreeMap<String, String>,
    Vec<k8s_openapi::api::core::v1::Toleration>,
) {
    (
        std::collections::BTreeMap::from([("type".to_owned(), "kwok".to_owned())]),
        vec![k8s_openapi::api::core::v1::Toleration {
            key: Some("kwok.x-k8s.io/node".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }],
    )
}
