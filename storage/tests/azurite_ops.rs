//! Storage operations against a real Azurite (shared by `cargo xtask test`, or private).

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

use azure_core::http::RequestContent;
use azure_storage_queue::models::{QueueClientReceiveMessagesOptions, QueueMessage};
use cqrs_storage::azurite::{Azurite, AzuriteOptions, TestAzurite, unique_name};
use cqrs_storage::blobs::BlobCorsRule;
use cqrs_storage::queues::{Ensured, poison_queue_name};
use cqrs_storage::{Provisioner, StorageAccount, StoragePlan};
use time::{Duration, OffsetDateTime};

async fn send(account: &StorageAccount, queue: &str, n: usize) {
    let client = account.queue(queue).unwrap();
    for i in 0..n {
        let msg = QueueMessage {
            message_text: Some(format!("m{i}")),
        };
        let content: RequestContent<QueueMessage, _> = msg.try_into().unwrap();
        client.send_message(content, None).await.unwrap();
    }
}

async fn queue_exists(account: &StorageAccount, queue: &str) -> bool {
    account.queue(queue).unwrap().exists().await.unwrap()
}

#[tokio::test]
async fn ensure_queue_with_poison_is_idempotent() {
    let azurite = TestAzurite::start().await;
    let account = azurite.account();
    let name = unique_name("orders");
    assert_eq!(
        account.ensure_queue_with_poison(&name).await.unwrap(),
        Ensured::Created
    );
    assert_eq!(
        account.ensure_queue_with_poison(&name).await.unwrap(),
        Ensured::Existed
    );
    assert!(queue_exists(&account, &name).await);
    assert!(queue_exists(&account, &poison_queue_name(&name)).await);
}

#[tokio::test]
async fn ensure_container_is_idempotent_and_delete_tolerates_absence() {
    let azurite = TestAzurite::start().await;
    let account = azurite.account();
    let name = unique_name("results");
    assert_eq!(
        account.ensure_container(&name).await.unwrap(),
        Ensured::Created
    );
    assert_eq!(
        account.ensure_container(&name).await.unwrap(),
        Ensured::Existed
    );
    assert!(account.delete_container(&name).await.unwrap());
    assert!(!account.delete_container(&name).await.unwrap());
    assert!(!account.container(&name).exists().await.unwrap());
}

#[tokio::test]
async fn delete_queue_reports_whether_it_existed() {
    let azurite = TestAzurite::start().await;
    let account = azurite.account();
    let name = unique_name("gone");
    account.ensure_queue(&name).await.unwrap();
    assert!(account.delete_queue(&name).await.unwrap());
    assert!(!account.delete_queue(&name).await.unwrap());
    assert!(!queue_exists(&account, &name).await);
}

#[tokio::test]
async fn queue_depth_counts_visible_and_in_flight_messages() {
    let azurite = TestAzurite::start().await;
    let account = azurite.account();
    let name = unique_name("depth");
    account.ensure_queue(&name).await.unwrap();

    let empty = account.queue_depth(&name).await.unwrap();
    assert_eq!((empty.approximate, empty.visible), (0, Some(0)));

    send(&account, &name, 5).await;
    let five = account.queue_depth(&name).await.unwrap();
    assert_eq!((five.approximate, five.visible), (5, Some(5)));

    // Receive two: they become invisible (in flight) but still count in the approximate total.
    let options = QueueClientReceiveMessagesOptions {
        number_of_messages: Some(2),
        visibility_timeout: Some(60),
        ..Default::default()
    };
    let received = account
        .queue(&name)
        .unwrap()
        .receive_messages(Some(options))
        .await
        .unwrap();
    assert_eq!(received.into_model().unwrap().items.unwrap().len(), 2);
    let depth = account.queue_depth(&name).await.unwrap();
    assert_eq!(depth.approximate, 5);
    assert_eq!(depth.visible, Some(3));
    assert_eq!(depth.in_flight(), Some(2));

    send(&account, &name, 40).await;
    let big = account.queue_depth(&name).await.unwrap();
    assert_eq!(big.approximate, 45);
    assert_eq!(
        big.visible, None,
        "more than one peek can see is only approximate"
    );
    assert_eq!(big.backlog(), 45);
}

#[tokio::test]
async fn depth_of_a_missing_queue_is_an_error_naming_it() {
    let azurite = TestAzurite::start().await;
    let name = unique_name("missing");
    let err = azurite
        .account()
        .queue_depth(&name)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&name) && err.contains("404"), "{err}");
}

#[tokio::test]
async fn blob_read_url_reads_one_blob_and_nothing_else() {
    let azurite = TestAzurite::start().await;
    let account = azurite.account();
    let container = unique_name("sas");
    account.ensure_container(&container).await.unwrap();
    for (name, body) in [("a.json", "{\"registrationToken\":null}"), ("b.json", "{}")] {
        let content: RequestContent<_, _> = azure_core::Bytes::from(body).into();
        account
            .blob(&container, name)
            .upload(content, None)
            .await
            .unwrap();
    }
    let url = account
        .blob_read_url(
            &container,
            "a.json",
            OffsetDateTime::now_utc() + Duration::hours(1),
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();

    let read = http.get(url.clone()).send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.text().await.unwrap(), "{\"registrationToken\":null}");

    let write = http
        .put(url.clone())
        .header("x-ms-blob-type", "BlockBlob")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403, "the URL must be read-only");

    let mut other = url.clone();
    other.set_path(&url.path().replace("a.json", "b.json"));
    assert_eq!(
        http.get(other).send().await.unwrap().status(),
        403,
        "the URL must cover one blob"
    );

    let expired = account
        .blob_read_url(
            &container,
            "a.json",
            OffsetDateTime::now_utc() - Duration::minutes(1),
        )
        .await
        .unwrap();
    assert_eq!(
        http.get(expired).send().await.unwrap().status(),
        403,
        "an expired URL must fail"
    );
}

#[tokio::test]
async fn provision_creates_what_is_missing_and_deprovision_removes_it() {
    let azurite = TestAzurite::start().await;
    let account = azurite.account();
    let plan = StoragePlan {
        owner: unique_name("ns-app"),
        queues: vec![unique_name("cmds")],
        containers: vec![unique_name("results")],
        cors: vec![],
    };
    let first = account.provision(&plan, &Default::default()).await.unwrap();
    assert_eq!(first.created.len(), 3, "{:?}", first.created);
    let second = account.provision(&plan, &Default::default()).await.unwrap();
    assert!(second.created.is_empty(), "{:?}", second.created);

    account
        .deprovision(&plan, &Default::default())
        .await
        .unwrap();
    for q in plan.all_queues() {
        assert!(!queue_exists(&account, &q).await, "{q} should be deleted");
    }
    assert!(
        !account
            .container(&plan.containers[0])
            .exists()
            .await
            .unwrap()
    );
    // Deprovisioning twice is fine.
    account
        .deprovision(&plan, &Default::default())
        .await
        .unwrap();
}

/// CORS rules are account-wide, so this test has an Azurite of its own.
#[tokio::test]
async fn cors_rules_are_merged_per_owner() {
    let azurite = Azurite::start(AzuriteOptions::default())
        .await
        .expect("this test needs Azurite");
    let account =
        StorageAccount::from_connection_string(&azurite.connection_string(), Default::default())
            .unwrap();
    let shop = [BlobCorsRule::read_only(
        vec!["http://127.0.0.1:8080".into()],
        3600,
    )];
    let blog = [BlobCorsRule::read_only(
        vec!["https://blog.example".into()],
        60,
    )];

    assert!(
        account
            .ensure_blob_cors("default-shop", &shop)
            .await
            .unwrap()
    );
    assert!(
        !account
            .ensure_blob_cors("default-shop", &shop)
            .await
            .unwrap(),
        "no write when equal"
    );
    assert!(
        account
            .ensure_blob_cors("default-blog", &blog)
            .await
            .unwrap()
    );
    let rules = account.blob_cors_rules().await.unwrap();
    assert_eq!(rules.len(), 2, "{rules:?}");

    assert!(account.remove_blob_cors("default-shop").await.unwrap());
    let rules = account.blob_cors_rules().await.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].allowed_origins.as_deref(),
        Some("https://blog.example")
    );

    // A browser preflight from the allowed origin is answered.
    let preflight = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!(
                "http://127.0.0.1:{}/devstoreaccount1/c/b",
                azurite.blob_port()
            ),
        )
        .header("Origin", "https://blog.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://blog.example")
    );
}

/// Texts of every message in `queue` (received and left to reappear: test queues are small).
async fn texts(account: &StorageAccount, queue: &str) -> Vec<String> {
    let options = azure_storage_queue::models::QueueClientPeekMessagesOptions {
        number_of_messages: Some(32),
        ..Default::default()
    };
    let mut texts: Vec<String> = account
        .queue(queue)
        .unwrap()
        .peek_messages(Some(options))
        .await
        .unwrap()
        .into_model()
        .unwrap()
        .items
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.message_text)
        .collect();
    texts.sort();
    texts
}

#[tokio::test]
async fn a_redrive_cut_between_copy_and_delete_duplicates_one_message_and_the_next_run_finishes() {
    use std::ops::ControlFlow;
    let azurite = TestAzurite::start().await;
    let account = azurite.account();
    let queue = unique_name("redrive");
    account.ensure_queue_with_poison(&queue).await.unwrap();
    let poison = poison_queue_name(&queue);
    send(&account, &poison, 4).await;
    // base64 text must go back as base64, byte for byte.
    let b64 = "eyJjb21tYW5kSWQiOiJjNSJ9";
    let client = account.queue(&poison).unwrap();
    let msg = QueueMessage {
        message_text: Some(b64.into()),
    };
    client
        .send_message(msg.try_into().unwrap(), None)
        .await
        .unwrap();

    let listed = account.peek_poison(&queue, 10).await.unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[0].text, "m0", "oldest first");
    assert_eq!(listed[4].preview(200), r#"{"commandId":"c5"}"#);
    assert_eq!(
        account.peek_poison(&queue, 10).await.unwrap(),
        listed,
        "a peek changes nothing"
    );

    // "Crash" right after the first copy: it is now in both queues.
    let hold = std::time::Duration::from_secs(1);
    let cut = account
        .redrive(&queue, 10, hold, None, |_| ControlFlow::Break(()))
        .await
        .unwrap();
    assert!(cut.moved.is_empty());
    assert_eq!(texts(&account, &queue).await, ["m0"]);
    tokio::time::sleep(hold + std::time::Duration::from_millis(500)).await;
    assert_eq!(
        account.peek_poison(&queue, 10).await.unwrap().len(),
        5,
        "nothing lost"
    );

    // The next run moves everything; m0 arrives twice (the workers are idempotent).
    let mut copied = vec![];
    let done = account
        .redrive(&queue, 10, hold, None, |id| {
            copied.push(id.to_string());
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(done.moved.len(), 5);
    assert_eq!(done.moved, copied);
    assert!(done.not_deleted.is_empty());
    let mut expected = vec!["m0", "m0", "m1", "m2", "m3", b64];
    expected.sort();
    assert_eq!(texts(&account, &queue).await, expected);
    assert!(account.peek_poison(&queue, 10).await.unwrap().is_empty());

    // --max bounds a run.
    send(&account, &poison, 3).await;
    let some = account
        .redrive(&queue, 2, hold, None, |_| ControlFlow::Continue(()))
        .await
        .unwrap();
    assert_eq!(some.moved.len(), 2);
    assert_eq!(account.peek_poison(&queue, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_redriven_claim_check_keeps_its_blob_for_the_new_message() {
    use cqrs_storage::claims::{CommandSender, POISONED_METADATA, Sent};
    let azurite = TestAzurite::start().await;
    let account = azurite.account();
    let queue = unique_name("claimed");
    let container = unique_name("claims");
    account.ensure_queue_with_poison(&queue).await.unwrap();
    account.ensure_container(&container).await.unwrap();
    // A large command, poisoned 8 days ago: its envelope now sits in the poison queue.
    let sender = CommandSender::new(account.clone(), container.clone(), 1024);
    let Sent::Claimed(claim) = sender
        .send(
            &poison_queue_name(&queue),
            &"y".repeat(2048),
            "text/plain",
            -1,
        )
        .await
        .unwrap()
    else {
        panic!("expected a claim")
    };
    let long_ago = (OffsetDateTime::now_utc() - Duration::days(8)).unix_timestamp();
    let blob = account.blob(&container, &claim.blob);
    blob.set_metadata(
        &[(POISONED_METADATA.to_string(), long_ago.to_string())].into(),
        None,
    )
    .await
    .unwrap();

    account
        .redrive(&queue, 10, std::time::Duration::from_secs(1), None, |_| {
            std::ops::ControlFlow::Continue(())
        })
        .await
        .unwrap();
    // Marked anew: the sweep keeps it 7 days from the redrive, as long as the new message.
    let swept = account
        .sweep_claims(&container, &poison_queue_name(&queue), None)
        .await
        .unwrap();
    assert_eq!((swept.deleted, swept.kept), (0, 1));
    assert!(blob.exists().await.unwrap());
}

/// A service that cannot bind its port makes Azurite exit after the others already listen:
/// that is a failed start, with Azurite's reason, never a ready instance (another process
/// answering on the port does not count).
#[tokio::test]
async fn an_azurite_whose_port_is_taken_fails_to_start_with_its_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let options = AzuriteOptions {
        queue_port: taken.local_addr().unwrap().port(),
        ..AzuriteOptions::default()
    };
    let err = Azurite::start(options)
        .await
        .expect_err("the queue port is taken")
        .to_string();
    assert!(err.contains("EADDRINUSE"), "{err}");
}
