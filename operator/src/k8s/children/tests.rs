use super::*;
use crate::crd::SecretKeyRef;
use crate::testing::app;

fn owner() -> Owner {
    Owner::of(&app()).unwrap()
}

fn access() -> StorageAccess {
    StorageAccess::SecretRef(SecretKeyRef {
        name: "pieshop-storage".into(),
        key: "connectionString".into(),
    })
}

fn env_of(d: &Deployment) -> Vec<EnvVar> {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap()
}

#[test]
fn children_are_owned_by_the_app_and_labelled() {
    let d = web_deployment(&owner(), &app().spec, &access()).unwrap();
    let refs = d.metadata.owner_references.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].kind, "CqrsApp");
    assert_eq!(refs[0].name, "pieshop");
    assert_eq!(refs[0].controller, Some(true));
    let labels = d.metadata.labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "cqrs-operator");
    assert_eq!(labels[COMPONENT_LABEL], "web");
    assert_eq!(d.metadata.name.as_deref(), Some("pieshop-web"));
}

#[test]
fn pods_run_non_root_with_a_read_only_root_filesystem_and_probes() {
    let a = app();
    let d = worker_deployment(&owner(), &a.spec, &a.spec.workers[0], &access(), Some(0));
    let pod = d.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert!(c.liveness_probe.is_some());
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(40),
        "visibility timeout + 10 s"
    );
    assert!(
        pod.volumes.unwrap().iter().any(|v| v.name == "tmp"),
        "a writable /tmp"
    );
}

#[test]
fn the_connection_string_is_a_secret_reference() {
    let d = web_deployment(&owner(), &app().spec, &access()).unwrap();
    let env = env_of(&d);
    let cs = env
        .iter()
        .find(|e| e.name == "CQRS_STORAGE_CONNECTION_STRING")
        .unwrap();
    assert_eq!(cs.value, None);
    let secret = cs
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("pieshop-storage", "connectionString")
    );
    assert!(
        env.iter().any(|e| e.name == "SCANNER_KEY"),
        "the user's env follows the contract"
    );
}

#[test]
fn rate_limited_workers_mount_their_share() {
    let mut a = app();
    a.spec.workers[1].max_messages_per_second = Some(60);
    let d = worker_deployment(&owner(), &a.spec, &a.spec.workers[1], &access(), None);
    assert_eq!(
        d.spec.as_ref().unwrap().replicas,
        None,
        "replicas are the scaler's once the Deployment exists"
    );
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "rate")
        .unwrap();
    assert_eq!(
        volume.config_map.as_ref().unwrap().name,
        "pieshop-stocker-rate"
    );
    let env = env_of(&d);
    assert!(
        env.iter().any(|e| e.name == "CQRS_RATE_SHARE_FILE"
            && e.value.as_deref() == Some("/etc/cqrs/rate/share"))
    );
    let cm = rate_configmap(&owner(), &a.spec.workers[1]);
    assert_eq!(cm.data, None, "the share is the scaler's to write");
}

#[test]
fn azure_apps_use_workload_identity() {
    let mut a = app();
    a.spec.storage.connection_secret_ref = None;
    a.spec.storage.azure = Some(crate::crd::AzureStorageSpec {
        subscription_id: "00000000-0000-0000-0000-000000000000".into(),
        resource_group: "rg".into(),
        account_name: "acct".into(),
        create_account: None,
        client_id: Some("11111111-2222-3333-4444-555555555555".into()),
    });
    let sa = service_account(&owner(), &a.spec);
    assert_eq!(
        sa.metadata.annotations.unwrap()["azure.workload.identity/client-id"],
        "11111111-2222-3333-4444-555555555555"
    );
    let d = web_deployment(&owner(), &a.spec, &access()).unwrap();
    let pod_labels = d.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert_eq!(pod_labels["azure.workload.identity/use"], "true");
}

#[test]
fn the_service_selects_the_web_pods() {
    let s = web_service(&owner(), &app().spec).unwrap();
    let spec = s.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.ports.unwrap()[0].port, 80);
    assert_eq!(spec.selector.unwrap()[COMPONENT_LABEL], "web");
}

#[test]
fn a_roles_node_selector_and_tolerations_reach_its_pods_and_no_other_roles() {
    let mut a = app();
    a.spec.workers[0].node_selector = BTreeMap::from([("type".into(), "kwok".into())]);
    a.spec.workers[0].tolerations = vec![Toleration {
        key: Some("kwok.x-k8s.io/node".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }];
    let pod = |d: Deployment| d.spec.unwrap().template.spec.unwrap();
    let placed = pod(worker_deployment(
        &owner(),
        &a.spec,
        &a.spec.workers[0],
        &access(),
        Some(0),
    ));
    assert_eq!(
        placed.node_selector,
        Some(BTreeMap::from([("type".into(), "kwok".into())]))
    );
    assert_eq!(
        placed.tolerations.unwrap()[0].key.as_deref(),
        Some("kwok.x-k8s.io/node")
    );
    let other = pod(worker_deployment(
        &owner(),
        &a.spec,
        &a.spec.workers[1],
        &access(),
        Some(0),
    ));
    assert_eq!((other.node_selector, other.tolerations), (None, None));
    let web = pod(web_deployment(&owner(), &a.spec, &access()).unwrap());
    assert_eq!((web.node_selector, web.tolerations), (None, None));
}
