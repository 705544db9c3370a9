//! Leader election between two operator processes on one Lease.

use std::time::{Duration, Instant};

use crate::harness::Harness;
use crate::operator::Operator;
use crate::support::{TestNamespace, ok, wait_for};

/// Who holds the operator's Lease in `ns`.
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
async fn only_the_leader_acts_and_the_standby_takes_over_when_it_is_killed() {
    let mut h = Harness::start("life-leader").await;
    // op-a holds the Lease before op-b starts, so the roles are known.
    wait_for("op-a to lead", Duration::from_secs(30), || {
        h.operator
            .log_text()
            .contains("became the leader")
            .then_some(())
    });
    let standby = Operator::start(&h.ns, &h.release, "op-b");
    h.create_secret();
    let mut app = h.test_app();
    app.spec.workers[0].scaling.polling_interval = 1;
    h.create(&app).await;
    h.wait_ready("shop");

    let holder = lease_holder(&h.ns);
    assert_eq!(holder, "op-a");
    assert!(h.operator.metric("cqrs_reconciliations_total") >= 1.0);
    assert!(
        h.operator.metric("cqrs_queue_probe_duration_seconds_count") >= 1.0,
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

    h.operator.kill();
    let killed = Instant::now();
    wait_for("op-b to reconcile", Duration::from_secs(120), || {
        (standby.metric("cqrs_reconciliations_total") >= 1.0).then_some(())
    });
    let failover = killed.elapsed();
    eprintln!(
        "measured: SIGKILL of the leader to the standby's first reconcile in {:.1} s (lease 15 s)",
        failover.as_secs_f64()
    );
    let holder = lease_holder(&h.ns);
    assert_eq!(holder, "op-b");
    wait_for("op-b to probe the queues", Duration::from_secs(30), || {
        (standby.metric("cqrs_queue_probe_duration_seconds_count") >= 1.0).then_some(())
    });
    standby.assert_no_forbidden();
    h.operator.assert_no_forbidden();
}
