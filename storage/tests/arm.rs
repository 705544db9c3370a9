//! ARM provisioning against a local HTTP server that answers with the shapes Azure Resource
//! Manager returns (taken from the Azure REST API reference for Microsoft.Storage 2023-05-01),
//! asserting every request's method, path, api-version, bearer token and body.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use cqrs_storage::arm::{ARM_API_VERSION, AccountCreate, AccountState, ArmProvisioner, ArmTarget};
use cqrs_storage::blobs::BlobCorsRule;
use cqrs_storage::queues::Ensured;
use cqrs_storage::{Error, Provisioner, StoragePlan};
use serde_json::{Value, json};

const SUB: &str = "00000000-1111-2222-3333-444444444444";
const RG: &str = "pies-rg";
const ACCOUNT: &str = "piesstore";

#[derive(Debug)]
struct FakeCredential;

#[async_trait::async_trait]
impl TokenCredential for FakeCredential {
    async fn get_token(
        &self,
        _: &[&str],
        _: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            "fake-arm-token",
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Seen {
    method: String,
    path: String,
    api_version: Option<String>,
    bearer: bool,
    body: Option<Value>,
}

#[derive(Default)]
struct Arm {
    seen: Vec<Seen>,
    account_state: Option<&'static str>,
    queues: Vec<String>,
    containers: Vec<String>,
    cors: Vec<Value>,
}

type Shared = Arc<Mutex<Arm>>;

fn account_id() -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Storage/storageAccounts/{ACCOUNT}"
    )
}

fn not_found(code: &str, what: &str) -> Response {
    let body = json!({"error": {"code": code, "message": format!("The specified {what} does not exist.")}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

fn account_body(state: &str) -> Value {
    json!({
        "id": account_id(), "name": ACCOUNT, "type": "Microsoft.Storage/storageAccounts",
        "location": "westeurope", "tags": {},
        "sku": {"name": "Standard_LRS", "tier": "Standard"}, "kind": "StorageV2",
        "properties": {
            "provisioningState": state,
            "primaryEndpoints": {
                "blob": format!("https://{ACCOUNT}.blob.core.windows.net/"),
                "queue": format!("https://{ACCOUNT}.queue.core.windows.net/"),
                "table": format!("https://{ACCOUNT}.table.core.windows.net/"),
                "file": format!("https://{ACCOUNT}.file.core.windows.net/")
            },
            "primaryLocation": "westeurope", "statusOfPrimary": "available",
            "creationTime": "2026-11-22T10:00:00.1234567Z",
            "supportsHttpsTrafficOnly": true, "minimumTlsVersion": "TLS1_2",
            "allowBlobPublicAccess": false, "accessTier": "Hot"
        }
    })
}

async fn handle(
    State(arm): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut arm = arm.lock().unwrap();
    let api_version = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|p| p.strip_prefix("api-version="))
            .map(String::from)
    });
    let bearer =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer fake-arm-token");
    let body: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let path = uri.path().to_string();
    arm.seen.push(Seen {
        method: method.to_string(),
        path: path.clone(),
        api_version,
        bearer,
        body: body.clone(),
    });

    let rest = path.strip_prefix(&account_id()).unwrap_or("?").to_string();
    match (method.as_str(), rest.as_str()) {
        ("GET", "") => match arm.account_state {
            None => not_found("ResourceNotFound", "storage account"),
            Some(state) => {
                // The next read sees the creation finished.
                arm.account_state = Some("Succeeded");
                axum::Json(account_body(state)).into_response()
            }
        },
        ("PUT", "") => {
            arm.account_state = Some("ResolvingDNS");
            // Azure accepts the creation asynchronously: 202, empty body, a Location to poll.
            let mut rsp = StatusCode::ACCEPTED.into_response();
            rsp.headers_mut().insert("location", "https://management.azure.com/subscriptions/x/providers/Microsoft.Storage/locations/westeurope/asyncoperations/1".parse().unwrap());
            rsp.headers_mut()
                .insert("retry-after", "17".parse().unwrap());
            rsp
        }
        (m, r) if r.starts_with("/queueServices/default/queues/") => {
            let name = r.rsplit('/').next().unwrap().to_string();
            let exists = arm.queues.contains(&name);
            let queue = json!({"id": format!("{}{r}", account_id()), "name": name,
                "type": "Microsoft.Storage/storageAccounts/queueServices/queues",
                "properties": {"metadata": {}, "approximateMessageCount": 0}});
            match m {
                "GET" if exists => axum::Json(queue).into_response(),
                "GET" => not_found("QueueNotFound", "queue"),
                "PUT" => {
                    arm.queues.push(name);
                    axum::Json(queue).into_response()
                }
                "DELETE" if exists => {
                    arm.queues.retain(|q| *q != name);
                    StatusCode::OK.into_response()
                }
                _ => StatusCode::NO_CONTENT.into_response(),
            }
        }
        (m, r) if r.starts_with("/blobServices/default/containers/") => {
            let name = r.rsplit('/').next().unwrap().to_string();
            let exists = arm.containers.contains(&name);
            let container = json!({"id": format!("{}{r}", account_id()), "name": name,
                "type": "Microsoft.Storage/storageAccounts/blobServices/containers",
                "etag": "\"0x8DCE0F6B1234567\"",
                "properties": {"publicAccess": "None", "leaseStatus": "Unlocked", "leaseState": "Available",
                    "lastModifiedTime": "2026-11-22T10:00:00.0000000Z", "hasImmutabilityPolicy": false, "hasLegalHold": false}});
            match m {
                "GET" if exists => axum::Json(container).into_response(),
                "GET" => not_found("ContainerNotFound", "container"),
                "PUT" => {
                    arm.containers.push(name);
                    (StatusCode::CREATED, axum::Json(container)).into_response()
                }
                "DELETE" if exists => {
                    arm.containers.retain(|c| *c != name);
                    StatusCode::OK.into_response()
                }
                _ => StatusCode::NO_CONTENT.into_response(),
            }
        }
        (m, "/blobServices/default") => {
            if m == "PUT" {
                arm.cors = body
                    .as_ref()
                    .and_then(|b| b.pointer("/properties/cors/corsRules"))
                    .and_then(|r| r.as_array().cloned())
                    .unwrap_or_default();
            }
            axum::Json(json!({"id": format!("{}/blobServices/default", account_id()), "name": "default",
                "type": "Microsoft.Storage/storageAccounts/blobServices",
                "sku": {"name": "Standard_LRS", "tier": "Standard"},
                "properties": {"cors": {"corsRules": arm.cors}, "deleteRetentionPolicy": {"enabled": false}}}))
            .into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            format!("unexpected {method} {path}"),
        )
            .into_response(),
    }
}

async fn fake_arm(arm: Shared) -> url::Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(handle).with_state(arm);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url::Url::parse(&format!("http://{addr}")).unwrap()
}

fn target(create: bool) -> ArmTarget {
    ArmTarget {
        subscription_id: SUB.into(),
        resource_group: RG.into(),
        account_name: ACCOUNT.into(),
        create: create.then(|| AccountCreate {
            location: "westeurope".into(),
            sku: "Standard_LRS".into(),
        }),
    }
}

async fn provisioner(arm: &Shared, create: bool) -> ArmProvisioner {
    let endpoint = fake_arm(arm.clone()).await;
    ArmProvisioner::new(target(create), Arc::new(FakeCredential), Some(endpoint)).unwrap()
}

fn requests(arm: &Shared) -> Vec<(String, String)> {
    let arm = arm.lock().unwrap();
    for seen in &arm.seen {
        assert_eq!(
            seen.api_version.as_deref(),
            Some(ARM_API_VERSION),
            "{seen:?}"
        );
        assert!(
            seen.bearer,
            "request without the adapted bearer token: {seen:?}"
        );
    }
    arm.seen
        .iter()
        .map(|s| {
            (
                s.method.clone(),
                s.path
                    .strip_prefix(&account_id())
                    .unwrap_or(&s.path)
                    .to_string(),
            )
        })
        .collect()
}

fn req(method: &str, path: &str) -> (String, String) {
    (method.to_string(), path.to_string())
}

#[tokio::test]
async fn a_missing_account_is_created_and_polled_across_calls() {
    let arm = Shared::default();
    let p = provisioner(&arm, true).await;

    assert_eq!(
        p.ensure_account().await.unwrap(),
        AccountState::Provisioning("Creating".into())
    );
    assert_eq!(
        p.ensure_account().await.unwrap(),
        AccountState::Provisioning("ResolvingDns".into())
    );
    let ready = p.ensure_account().await.unwrap();
    assert_eq!(
        ready,
        AccountState::Ready {
            blob_endpoint: url::Url::parse("https://piesstore.blob.core.windows.net/").unwrap(),
            queue_endpoint: url::Url::parse("https://piesstore.queue.core.windows.net/").unwrap(),
        }
    );
    assert_eq!(
        requests(&arm),
        vec![
            req("GET", ""),
            req("PUT", ""),
            req("GET", ""),
            req("GET", "")
        ]
    );

    let put = arm.lock().unwrap().seen[1].body.clone().unwrap();
    assert_eq!(put["location"], "westeurope");
    assert_eq!(put["kind"], "StorageV2");
    assert_eq!(put["sku"]["name"], "Standard_LRS");
    assert_eq!(put["properties"]["supportsHttpsTrafficOnly"], true);
    assert_eq!(put["properties"]["minimumTlsVersion"], "TLS1_2");
    assert_eq!(put["properties"]["allowBlobPublicAccess"], false);
}

#[tokio::test]
async fn a_missing_account_without_create_is_a_clear_error() {
    let arm = Shared::default();
    let p = provisioner(&arm, false).await;
    let err = p.ensure_account().await.unwrap_err().to_string();
    assert!(
        err.contains("does not exist") && err.contains("createAccount"),
        "{err}"
    );
    assert_eq!(requests(&arm), vec![req("GET", "")], "nothing is created");
}

#[tokio::test]
async fn provisioning_waits_for_the_account_then_creates_queues_containers_and_cors() {
    let arm = Shared::default();
    let p = provisioner(&arm, true).await;
    let plan = StoragePlan {
        owner: "shop-pies".into(),
        queues: vec!["registrations".into()],
        containers: vec!["results".into()],
        cors: vec![BlobCorsRule::read_only(
            vec!["https://pies.example".into()],
            3600,
        )],
    };
    arm.lock().unwrap().cors = vec![
        json!({"allowedOrigins": ["https://other.example"], "allowedMethods": ["PUT"],
        "maxAgeInSeconds": 60, "exposedHeaders": ["*"], "allowedHeaders": ["*"]}),
    ];

    let err = p.provision(&plan, &Default::default()).await.unwrap_err();
    assert!(matches!(err, Error::AccountProvisioning { .. }), "{err}");
    assert!(err.is_transient());
    arm.lock().unwrap().account_state = Some("Succeeded");
    arm.lock().unwrap().seen.clear();

    let report = p.provision(&plan, &Default::default()).await.unwrap();
    assert_eq!(
        report.created,
        [
            "queue/registrations",
            "queue/registrations-poison",
            "container/results"
        ]
    );
    assert!(report.cors_updated);
    // The account first; each queue and container read, then created (side by side with the
    // others); the CORS rules last, read before written.
    let calls = requests(&arm);
    assert_eq!(calls.len(), 9, "{calls:?}");
    assert_eq!(calls[0], req("GET", ""), "{calls:?}");
    assert_eq!(
        calls[7..],
        [
            req("GET", "/blobServices/default"),
            req("PUT", "/blobServices/default")
        ],
        "{calls:?}"
    );
    for path in [
        "/queueServices/default/queues/registrations",
        "/queueServices/default/queues/registrations-poison",
        "/blobServices/default/containers/results",
    ] {
        let at = |method| calls.iter().position(|c| *c == req(method, path));
        assert!(
            matches!((at("GET"), at("PUT")), (Some(get), Some(put)) if get < put),
            "{path}: {calls:?}"
        );
    }
    let seen = arm.lock().unwrap().seen.clone();
    let container = seen
        .iter()
        .find(|s| s.method == "PUT" && s.path.ends_with("/blobServices/default/containers/results"))
        .unwrap();
    assert_eq!(
        container.body.as_ref().unwrap()["properties"]["publicAccess"],
        "None"
    );
    let rules = seen[8].body.as_ref().unwrap()["properties"]["cors"]["corsRules"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rules.len(), 2, "the foreign rule is kept: {rules:?}");
    assert_eq!(rules[0]["allowedOrigins"], json!(["https://other.example"]));
    assert_eq!(rules[1]["allowedOrigins"], json!(["https://pies.example"]));
    assert_eq!(rules[1]["allowedMethods"], json!(["GET", "HEAD"]));
    assert_eq!(rules[1]["maxAgeInSeconds"], 3600);

    // A second pass only reads.
    arm.lock().unwrap().seen.clear();
    let again = p.provision(&plan, &Default::default()).await.unwrap();
    assert!(again.created.is_empty() && !again.cors_updated);
    assert!(requests(&arm).iter().all(|(m, _)| m == "GET"));
}

#[tokio::test]
async fn deprovisioning_deletes_and_tolerates_what_is_gone() {
    let arm = Shared::default();
    let p = provisioner(&arm, false).await;
    {
        let mut a = arm.lock().unwrap();
        a.account_state = Some("Succeeded");
        a.queues = vec!["registrations".into(), "registrations-poison".into()];
        a.containers = vec!["results".into()];
    }
    let plan = StoragePlan {
        owner: "shop-pies".into(),
        queues: vec!["registrations".into()],
        containers: vec!["results".into()],
        cors: vec![],
    };
    p.deprovision(&plan, &Default::default()).await.unwrap();
    assert_eq!(
        requests(&arm),
        vec![
            req("DELETE", "/queueServices/default/queues/registrations"),
            req(
                "DELETE",
                "/queueServices/default/queues/registrations-poison"
            ),
            req("DELETE", "/blobServices/default/containers/results"),
            req("GET", "/blobServices/default"),
        ]
    );
    assert!(
        !p.delete_queue("registrations").await.unwrap(),
        "204: nothing was there"
    );
    assert_eq!(
        p.ensure_queue("registrations").await.unwrap(),
        Ensured::Created
    );
}
