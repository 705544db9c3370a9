//! Leader election between two operator processes on one Lease.

use std::time::{Duration, Instant};

use cqrs_operator::crd::CqrsApp;
use cqrs_storage::azurite::TestAzurite;
use kube::api::{Api, PostParams};

use crate::lifecycle::test_app;
use crate::operator::{Operator, install_chart, storage_secret};
use crate::support::{TestNamespace, cluster, ok, wait_for};

#[tokio::test]
async fn only_the_leader_acts_and_the_standby_takes_over_when_it_is_killed() {
    let azurite = TestAzurite::start().await;
    let ns = TestNamespace::create("life-leader");
    let release = install_chart(&ns);
    let mut leader = Operator::start(&ns, &release, "op-a");
    // op-a holds the Lease before op-b starts, so the roles are known.
    wait_for("op-a to lead", Duration::from_secs(30), || {
        leader
            .log_text()
            .contains("became the leader")
            .then_some(())
    });
    let standby = Operator::start(&ns, &release, "op-b");
    storage_secret(
        &ns,
        "pieshop-storage",
        &azurite.connection_string.to_connection_string(),
    );
    let apps: Api<CqrsApp> = Api::namespaced(cluster().client().await, &ns.name);
    let mut app = test_app(&ns);
    app.spec.workers[0].scaling.polling_interval = 1;
    apps.create(&PostParams::default(), &app)
        .await
        .expect("created");
    ok(ns.kubectl().args([
        "wait",
        "--for=condition=Ready",
        "cqrsapp/shop",
        "--timeout=120s",
    ]));

    let holder = ok(ns.kubectl().args([
        "get",
        "lease",
        "cqrs-operator-leader",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]));
    assert_eq!(holder, "op-a");
    assert!(leader.metric("cqrs_reconciliations_total") >= 1.0);
    assert!(
        leader.metric("cqrs_queue_probe_duration_seconds_count") >= 1.0,
        "the leader probes"
    );
    assert_eq!(
        standby.metric("cqrs_reconciliations_total"),
        0.0,
        "the standby does not reconcile"
    );
    assert_eq!(
        standby.metric("cqrs_queue_probe_duration_seconds_count"),
        0.0,
        "nor probe or scale"
    );

    leader.kill();
    let killed = Instant::now();
    wait_for("op-b to reconcile", Duration::from_secs(120), || {
        (standby.metric("cqrs_reconciliations_total") >= 1.0).then_some(())
    });
    let failover = killed.elapsed();
    eprintln!(
        "measured: SIGKILL of the leader to the standby's first reconcile in {:.1} s (lease 15 s)",
        failover.as_secs_f64()
    );
    let holder = ok(ns.kubectl().args([
        "get",
        "lease",
        "cqrs-operator-leader",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]));
    assert_eq!(holder, "op-b");
    wait_for("op-b to probe the queues", Duration::from_secs(30), || {
        (standby.metric("cqrs_queue_probe_duration_seconds_count") >= 1.0).then_some(())
    });
    standby.assert_no_forbidden();
    leader.assert_no_forbidden();
}
