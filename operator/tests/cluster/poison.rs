//! Poison queues on the real control plane, under the chart's RBAC: counted in the status and
//! the `Poison` column, warned about with an Event, and redriven by annotation.

use std::time::Duration;

use azure_storage_queue::models::QueueMessage;
use cqrs_storage::queues::poison_queue_name;

use crate::harness::Harness;
use crate::support::{eventually, ok};

#[tokio::test]
async fn poison_messages_are_counted_warned_about_and_redriven_by_annotation() {
    let (h, app) = Harness::ready("poison", |_| {}).await;
    let queue = app.spec.queues[0].name.clone();
    let account = h.account();
    let poison = account.queue(&poison_queue_name(&queue)).unwrap();
    for i in 0..3 {
        let message = QueueMessage {
            message_text: Some(format!(r#"{{"poisoned":{i}}}"#)),
        };
        poison
            .send_message(message.try_into().unwrap(), None)
            .await
            .unwrap();
    }

    // Read on the resync (60 s), not on the scaling path.
    eventually(
        "status.totalPoisonMessages = 3",
        Duration::from_secs(150),
        || async {
            h.apps
                .get("shop")
                .await
                .ok()
                .and_then(|a| a.status)
                .is_some_and(|s| {
                    s.total_poison_messages == Some(3)
                        && s.queues
                            .iter()
                            .any(|q| q.name == queue && q.poison_message_count == Some(3))
                })
        },
    )
    .await;
    let table = ok(h.ns.kubectl().args(["get", "cqrsapp", "shop"]));
    let (header, row) = table.split_once('\n').unwrap();
    // NB: by offset: "QUEUE DEPTH" is one column of two words.
    let at = header.find("POISON").unwrap();
    assert_eq!(row[at..].split_whitespace().next(), Some("3"), "{table}");
    let events = ok(h.ns.kubectl().args([
        "get",
        "events",
        "--field-selector",
        "type=Warning,reason=MessagesPoisoned",
        "-o",
        "jsonpath={.items[*].message}",
    ]));
    // NB: how many the note says depends on how the three sends fell between reconciles
    // (repeats fold into the first Event's series).
    assert!(
        events.contains(&format!("new message(s) in {queue}-poison")),
        "{events}"
    );

    // The CLI reads the app and its Secret with the caller's kubeconfig.
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cqrs-operator"));
        cmd.arg("poison")
            .args(args)
            .args(["--app", "shop", "-n", &h.ns.name, "--queue", &queue])
            .env("KUBECONFIG", crate::support::cluster().kubeconfig())
            .env_remove("CQRS_STORAGE_CONNECTION_STRING");
        ok(&mut cmd)
    };
    let listed = cli(&["list"]);
    assert!(listed.contains("3 message(s)"), "{listed}");
    assert!(listed.contains(r#"{"poisoned":0}"#), "{listed}");
    let dry = cli(&["redrive", "--dry-run"]);
    assert!(dry.contains("would move 3"), "{dry}");

    ok(h.ns.kubectl().args([
        "annotate",
        "cqrsapp/shop",
        &format!("cqrs.dev/redrive={queue}"),
    ]));
    eventually(
        "the annotation handled and removed",
        Duration::from_secs(60),
        || async {
            h.apps.get("shop").await.is_ok_and(|a| {
                !a.metadata
                    .annotations
                    .unwrap_or_default()
                    .contains_key("cqrs.dev/redrive")
            })
        },
    )
    .await;
    assert!(account.peek_poison(&queue, 10).await.unwrap().is_empty());
    let depth = account.queue_depth(&queue).await.unwrap();
    assert!(depth.approximate >= 3, "back on {queue}: {depth:?}");
    let redriven = ok(h.ns.kubectl().args([
        "get",
        "events",
        "--field-selector",
        "reason=Redriven",
        "-o",
        "jsonpath={.items[*].message}",
    ]));
    assert!(
        redriven.contains(&format!(
            "moved 3 message(s) from {queue}-poison back to {queue}"
        )),
        "{redriven}"
    );
    h.operator.assert_no_forbidden();
}
