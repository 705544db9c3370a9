//! The reference app's flows end to end, through HTTP and real queues and blobs in Azurite.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

mod support;

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};
use support::{App, Options, SCANNER_KEY, wait_for_result, wait_until};

fn registration(email: &str) -> Value {
    json!({"firstName": "Ada", "lastName": "Lovelace", "email": email, "dateOfBirth": "1990-12-10"})
}

async fn register(app: &App, body: &Value) -> reqwest::Response {
    App::client()
        .post(format!("{}/api/registrations", app.web))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_registration_gets_its_token_through_the_sas_url() {
    let mut app = App::start(Options::default()).await;
    app.start_worker("registrar", &[]).await;
    let response = register(&app, &registration("ada@example.com")).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let url = accepted["resultUrl"].as_str().unwrap();
    assert!(
        url.contains(&format!(
            "/{}/registrations/{}.json?",
            app.names.results,
            accepted["id"].as_str().unwrap()
        )),
        "{url}"
    );
    assert!(
        url.contains("sp=r&") && url.contains("sr=b"),
        "read-only, single blob: {url}"
    );

    let result = wait_for_result(url).await;
    let token = result["registrationToken"].as_str().unwrap();
    assert!(token.starts_with("RT-"), "{result}");
    assert!(result.get("error").is_none());
}

#[tokio::test]
async fn the_result_url_is_read_only_and_scoped_to_one_blob() {
    let app = App::start(Options::default()).await;
    let first: Value = register(&app, &registration("one@example.com"))
        .await
        .json()
        .await
        .unwrap();
    let second: Value = register(&app, &registration("two@example.com"))
        .await
        .json()
        .await
        .unwrap();
    let url = url::Url::parse(first["resultUrl"].as_str().unwrap()).unwrap();
    let http = App::client();

    let pending: Value = http
        .get(url.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        pending,
        json!({"registrationToken": null}),
        "the pending result is readable before a worker ran"
    );
    let write = http
        .put(url.clone())
        .header("x-ms-blob-type", "BlockBlob")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403, "writing with the URL must fail");
    let delete = http.delete(url.clone()).send().await.unwrap();
    assert_eq!(delete.status(), 403, "deleting with the URL must fail");
    let mut other = url.clone();
    other.set_path(&url.path().replace(
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    ));
    assert_eq!(
        http.get(other).send().await.unwrap().status(),
        403,
        "the URL must not open another blob"
    );
    assert!(url.query().unwrap().contains("se="), "the URL expires");
}

#[tokio::test]
async fn one_registration_per_email_even_with_many_workers() {
    let mut app = App::start(Options::default()).await;
    for _ in 0..3 {
        app.start_worker("registrar", &[]).await;
    }
    let mut urls = Vec::new();
    for i in 0..6 {
        // Same address, different spelling: normalized to one.
        let email = if i % 2 == 0 {
            "Pie.Lover@Example.com"
        } else {
            " pie.lover@example.com "
        };
        let accepted: Value = register(&app, &registration(email))
            .await
            .json()
            .await
            .unwrap();
        urls.push(accepted["resultUrl"].as_str().unwrap().to_string());
    }
    let mut tokens = 0;
    let mut refused = 0;
    for url in &urls {
        let result = wait_for_result(url).await;
        if result["registrationToken"].is_string() {
            tokens += 1;
        } else {
            assert!(
                result["error"]
                    .as_str()
                    .unwrap()
                    .contains("already registered"),
                "{result}"
            );
            refused += 1;
        }
    }
    assert_eq!((tokens, refused), (1, 5));
}

#[tokio::test]
async fn an_invalid_registration_is_a_400_with_field_errors() {
    let app = App::start(Options::default()).await;
    let response = register(
        &app,
        &json!({"firstName": "", "email": "nope", "dateOfBirth": "2999-01-01"}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"]["firstName"], "is required");
    assert_eq!(body["errors"]["lastName"], "is required");
    assert_eq!(body["errors"]["email"], "is not a valid email address");
    assert_eq!(body["errors"]["dateOfBirth"], "must not be in the future");

    let malformed = App::client()
        .post(format!("{}/api/registrations", app.web))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let body: Value = malformed.json().await.unwrap();
    assert!(body["errors"]["body"].is_string(), "{body}");
    assert!(
        app.peek(&app.names.registrations).await.is_empty(),
        "nothing was enqueued"
    );
}

async fn adjust(app: &App, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = App::client()
        .post(format!("{}/api/inventory/adjustments", app.web))
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn inventory_commands_need_the_scanner_key() {
    let app = App::start(Options::default()).await;
    let body = json!({"commandId": "c1", "location": "downtown", "item": "apple", "delta": 1});
    let missing = adjust(&app, None, &body).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_eq!(adjust(&app, Some("wrong-key"), &body).await.status(), 401);
    assert!(app.peek(&app.names.inventory).await.is_empty());
    assert_eq!(adjust(&app, Some(SCANNER_KEY), &body).await.status(), 202);
    // Queries are public.
    assert_eq!(
        reqwest::get(format!("{}/api/inventory", app.web))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn several_workers_and_redelivered_duplicates_give_exact_counts() {
    let mut app = App::start(Options::default()).await;
    for _ in 0..3 {
        app.start_worker("stocker", &[("WORKER_BATCH", "8")]).await;
    }
    let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
    let locations = ["downtown", "harbour", "airport"];
    let items = ["apple", "cherry", "pecan"];
    for i in 0..150i64 {
        let (location, item) = (locations[(i % 3) as usize], items[(i % 7 % 3) as usize]);
        let delta = (i % 5) - 1;
        let delta = if delta == 0 { 3 } else { delta };
        let body = json!({"commandId": format!("scan-{i}"), "location": location, "item": item, "delta": delta});
        *expected.entry((location.into(), item.into())).or_default() += delta;
        match i % 3 {
            // Through the web role...
            0 => assert_eq!(adjust(&app, Some(SCANNER_KEY), &body).await.status(), 202),
            // ...straight onto the queue as JSON...
            1 => {
                app.enqueue_raw(&app.names.inventory, &body.to_string())
                    .await
            }
            // ...or as base64-encoded JSON.
            _ => {
                app.enqueue_raw(
                    &app.names.inventory,
                    &base64::engine::general_purpose::STANDARD.encode(body.to_string()),
                )
                .await
            }
        }
        if i % 10 == 0 {
            // A scanner that resends the same command: must count once.
            app.enqueue_raw(&app.names.inventory, &body.to_string())
                .await;
        }
    }
    wait_until("every adjustment to be applied", || async {
        support::stock(&app.web).await == expected
    })
    .await;
    let model: Value = reqwest::get(format!("{}/api/inventory", app.web))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total: i64 = expected.values().sum();
    assert_eq!(model["totals"]["quantity"], total);
    assert_eq!(model["totals"]["locations"], 3);
}

#[tokio::test]
async fn a_malformed_message_ends_in_the_poison_queue_and_work_goes_on() {
    let mut app = App::start(Options::default()).await;
    app.start_worker("stocker", &[]).await;
    app.enqueue_raw(&app.names.inventory, "this is not a command")
        .await;
    app.enqueue_raw(
        &app.names.inventory,
        r#"{"commandId":"x","location":"l","item":"i","delta":0}"#,
    )
    .await;
    app.enqueue_raw(
        &app.names.inventory,
        r#"{"commandId":"ok-1","location":"downtown","item":"apple","delta":4}"#,
    )
    .await;
    let poison = format!("{}-poison", app.names.inventory);
    wait_until("both bad messages in the poison queue", || async {
        app.peek(&poison).await.len() == 2
    })
    .await;
    let poisoned = app.peek(&poison).await;
    assert!(
        poisoned.contains(&"this is not a command".to_string()),
        "{poisoned:?}"
    );
    wait_until("the good message to be applied", || async {
        support::stock_of(&app.web, "downtown", "apple").await == Some(4)
    })
    .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", app.workers[0].2))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pieshop_messages_poisoned_total"),
        "{metrics}"
    );
    assert!(app.peek(&app.names.inventory).await.is_empty());
}

#[tokio::test]
async fn a_registration_that_keeps_failing_is_poisoned_and_the_browser_gets_an_error() {
    let mut app = App::start(Options {
        max_dequeue: 2,
        visibility: 1,
        ..Options::default()
    })
    .await;
    // A result blob that is not JSON makes every attempt fail.
    let id = "0b9f5c1e-0000-4000-8000-00000000dead";
    let blob = format!("registrations/{id}.json");
    let content: azure_core::http::RequestContent<azure_core::Bytes, _> =
        azure_core::Bytes::from_static(b"garbage").into();
    app.account
        .blob(&app.names.results, &blob)
        .upload(content, None)
        .await
        .unwrap();
    let command = json!({"id": id, "firstName": "A", "lastName": "B", "email": "poison@example.com", "dateOfBirth": "1990-01-01"});
    app.enqueue_raw(&app.names.registrations, &command.to_string())
        .await;
    app.start_worker("registrar", &[]).await;

    let poison = format!("{}-poison", app.names.registrations);
    wait_until("the command in the poison queue", || async {
        app.peek(&poison).await.len() == 1
    })
    .await;
    let url = app
        .account
        .blob_read_url(
            &app.names.results,
            &blob,
            time::OffsetDateTime::now_utc() + time::Duration::minutes(5),
        )
        .await
        .unwrap();
    let result = wait_for_result(url.as_str()).await;
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("could not be processed"),
        "{result}"
    );
}

#[tokio::test]
async fn sigterm_lets_a_worker_finish_and_exit_zero() {
    let mut app = App::start(Options::default()).await;
    let i = app.start_worker("registrar", &[]).await;
    let accepted: Value = register(&app, &registration("term@example.com"))
        .await
        .json()
        .await
        .unwrap();
    wait_for_result(accepted["resultUrl"].as_str().unwrap()).await;
    let status = app.terminate_worker(i).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_dashboard_and_the_form_render() {
    let app = App::start(Options::default()).await;
    let home = reqwest::get(&app.web).await.unwrap().text().await.unwrap();
    assert!(home.contains("<form id=\"register\"") && home.contains("dateOfBirth"));
    let page = reqwest::get(format!("{}/inventory", app.web))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("No stock recorded yet") && page.contains("EventSource"));
}
