//! Poison messages recovered: registrations poisoned while the "email service" is down
//! (`EMAIL_SERVICE_DOWN=true`) get an error result that says they are kept; after the failure
//! is switched off, a redrive brings them back and the same result blobs get their tokens,
//! exactly once even when a redrive is cut between its copy and its delete.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

mod support;

use std::ops::ControlFlow;
use std::time::Duration;

use serde_json::{Value, json};
use support::{App, Options, wait_for_result, wait_until};

async fn token_of(url: &str) -> Option<String> {
    let result: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
    result["registrationToken"].as_str().map(String::from)
}

#[tokio::test]
async fn registrations_poisoned_while_email_is_down_get_their_token_after_a_redrive_exactly_once() {
    let mut app = App::start(Options {
        max_dequeue: 2,
        visibility: 1,
        ..Options::default()
    })
    .await;
    let down = app
        .start_worker("registrar", &[("EMAIL_SERVICE_DOWN", "true")])
        .await;
    let mut urls = vec![];
    for i in 0..3 {
        let body = json!({"firstName": "Ada", "lastName": "L", "email": format!("down-{i}@example.com"), "dateOfBirth": "1990-12-10"});
        let accepted: Value = App::client()
            .post(format!("{}/api/registrations", app.web))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        urls.push(accepted["resultUrl"].as_str().unwrap().to_string());
    }
    for url in &urls {
        let result = wait_for_result(url).await;
        assert_eq!(result["retryable"], true, "{result}");
        assert!(
            result["error"]
                .as_str()
                .unwrap()
                .contains("will be retried"),
            "{result}"
        );
    }
    let queue = app.names.registrations.clone();
    wait_until("all three in the poison queue", || async {
        app.account.peek_poison(&queue, 10).await.unwrap().len() == 3
    })
    .await;
    // Each with why and after how many tries, for `poison list` (written just after the copy).
    let claims = app.names.claims.clone();
    wait_until("the three poison records", || async {
        let mut listed = app.account.peek_poison(&queue, 10).await.unwrap();
        app.account
            .read_poison_records(&claims, &queue, &mut listed)
            .await;
        listed.iter().all(|m| m.record.is_some())
    })
    .await;
    let mut listed = app.account.peek_poison(&queue, 10).await.unwrap();
    app.account
        .read_poison_records(&claims, &queue, &mut listed)
        .await;
    for m in &listed {
        let record = m.record.as_ref().expect("a poison record");
        assert_eq!(record.tries, 3, "{record:?}");
        assert!(
            record
                .reason
                .contains("dequeued 3 times (maxDequeueCount 2)"),
            "{record:?}"
        );
    }

    // The email service is back.
    app.terminate_worker(down).await;
    app.start_worker("registrar", &[]).await;

    // A redrive "killed" right after its first copy: that message is in both queues.
    let hold = Duration::from_secs(2);
    app.account
        .redrive(&queue, 10, hold, None, |_| ControlFlow::Break(()))
        .await
        .unwrap();
    let first = wait_for_token(&urls).await;
    // Run again once the cut one's hold expired: it finishes the job (one duplicate).
    tokio::time::sleep(hold + Duration::from_millis(500)).await;
    let done = app
        .account
        .redrive(&queue, 10, hold, Some(&claims), |_| {
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(done.moved.len(), 3, "{done:?}");
    wait_until("every registration to get its token", || async {
        let mut all = true;
        for url in &urls {
            all &= token_of(url).await.is_some();
        }
        all
    })
    .await;
    wait_until("the duplicate handled too", || async {
        app.peek(&queue).await.is_empty()
    })
    .await;
    let (url, token) = first;
    assert_eq!(
        token_of(&url).await.unwrap(),
        token,
        "the duplicated registration kept its first token (handled once)"
    );
    assert!(
        app.account
            .peek_poison(&queue, 10)
            .await
            .unwrap()
            .is_empty()
    );
    app.account
        .read_poison_records(&claims, &queue, &mut listed)
        .await;
    assert!(
        listed.iter().all(|m| m.record.is_none()),
        "the records go with the messages"
    );
    for url in &urls {
        let result: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        assert!(
            result.get("error").is_none() && result.get("retryable").is_none(),
            "{result}"
        );
    }
}

/// The first of `urls` to get a token, and the token.
async fn wait_for_token(urls: &[String]) -> (String, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        for url in urls {
            if let Some(token) = token_of(url).await {
                return (url.clone(), token);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no token after the first copy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
