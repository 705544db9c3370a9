//! A storage account and the official SDK clients for it.
//!
//! Two ways in:
//! - **Shared key** (Azurite, key-based accounts): every request carries an account SAS signed
//!   locally from the key by [`SasPolicy`] (re-signed before it expires). The 1.x SDK has no
//!   shared-key signer, and Azurite has no Entra ID over http.
//! - **Entra ID** (real accounts): the SDK's bearer-token policy with an `azure_identity`
//!   credential (workload identity, managed identity or developer tools).
//!
//! All clients of one account share one HTTP transport (one connection pool).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    ClientOptions, Context, ExponentialRetryOptions, HttpClientOptions, Request, RetryOptions,
    Transport, Url, new_http_client,
};
use azure_storage_blob::models::KeyInfo;
use azure_storage_blob::{
    BlobClient, BlobContainerClient, BlobServiceClient, BlobServiceClientOptions,
};
use azure_storage_queue::{QueueClient, QueueServiceClient, QueueServiceClientOptions};
use time::OffsetDateTime;

use crate::Error;
use crate::connection::{AccountKey, ConnectionString};
use crate::sas::{AccountSas, BlobSas, UserDelegationKey, format_sas_time};

/// How long a locally signed account SAS is valid, and how early it is re-signed.
const ACCOUNT_SAS_LIFETIME: time::Duration = time::Duration::hours(2);
const ACCOUNT_SAS_RENEW_BEFORE: time::Duration = time::Duration::minutes(15);
/// How long a user delegation key is requested for, and how early it is renewed.
const DELEGATION_KEY_LIFETIME: time::Duration = time::Duration::hours(24);
const DELEGATION_KEY_RENEW_BEFORE: time::Duration = time::Duration::hours(2);

/// How hard the SDK pipeline tries before an operation fails.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetrySettings {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry (doubles each time).
    pub initial_delay: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub max_total: Duration,
    /// Abandon one attempt after this long (a hung connection never blocks forever).
    pub per_try_timeout: Duration,
}

impl RetrySettings {
    /// For background work (workers, the operator): ride out short outages.
    pub const BACKGROUND: RetrySettings = RetrySettings {
        max_retries: 5,
        initial_delay: Duration::from_millis(200),
        max_total: Duration::from_secs(20),
        per_try_timeout: Duration::from_secs(30),
    };
    /// For request paths (the web role): fail fast so the caller gets a 503, not a hang.
    pub const INTERACTIVE: RetrySettings = RetrySettings {
        max_retries: 2,
        initial_delay: Duration::from_millis(100),
        max_total: Duration::from_secs(3),
        per_try_timeout: Duration::from_secs(5),
    };
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self::BACKGROUND
    }
}

/// How requests to the account are authorized.
#[derive(Clone, Debug)]
enum Auth {
    SharedKey(AccountKey),
    Entra,
}

/// A storage account: endpoints, credentials, and ready-made SDK clients.
#[derive(Clone, Debug)]
pub struct StorageAccount {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    auth: Auth,
    blob_service: BlobServiceClient,
    queue_service: QueueServiceClient,
    delegation_key: tokio::sync::Mutex<Option<UserDelegationKey>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageAccount")
            .field("name", &self.name)
            .field("blob", &self.blob_service.url().as_str())
            .field("queue", &self.queue_service.url().as_str())
            .finish_non_exhaustive()
    }
}

impl StorageAccount {
    /// An account reached with its shared key (Azurite or a key-based Azure account).
    pub fn from_connection_string(
        cs: &ConnectionString,
        retry: RetrySettings,
    ) -> Result<Self, Error> {
        let sas = Arc::new(SasPolicy::new(
            cs.account_name.clone(),
            cs.account_key.clone(),
        ));
        let options = client_options(retry, Some(sas));
        Self::build(
            cs.account_name.clone(),
            Auth::SharedKey(cs.account_key.clone()),
            cs.blob_endpoint.clone(),
            cs.queue_endpoint.clone(),
            options,
            None,
        )
    }

    /// An Azure account reached with an Entra ID credential, on its standard public-cloud
    /// endpoints unless `endpoints` overrides them.
    pub fn with_token_credential(
        account_name: &str,
        credential: Arc<dyn TokenCredential>,
        endpoints: Option<(Url, Url)>,
        retry: RetrySettings,
    ) -> Result<Self, Error> {
        let (blob, queue) = match endpoints {
            Some(e) => e,
            None => (
                parse_url(&format!("https://{account_name}.blob.core.windows.net/"))?,
                parse_url(&format!("https://{account_name}.queue.core.windows.net/"))?,
            ),
        };
        let options = client_options(retry, None);
        Self::build(
            account_name.into(),
            Auth::Entra,
            blob,
            queue,
            options,
            Some(credential),
        )
    }

    fn build(
        name: String,
        auth: Auth,
        blob_endpoint: Url,
        queue_endpoint: Url,
        client_options: ClientOptions,
        credential: Option<Arc<dyn TokenCredential>>,
    ) -> Result<Self, Error> {
        let blob_service = BlobServiceClient::new(
            blob_endpoint,
            credential.clone(),
            Some(BlobServiceClientOptions {
                client_options: client_options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|source| Error::BuildClient {
            service: "blob",
            source: source.into(),
        })?;
        let queue_service = QueueServiceClient::new(
            queue_endpoint,
            credential,
            Some(QueueServiceClientOptions {
                client_options,
                ..Default::default()
            }),
        )
        .map_err(|source| Error::BuildClient {
            service: "queue",
            source: source.into(),
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                auth,
                blob_service,
                queue_service,
                delegation_key: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The account name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The queue service client.
    pub fn queue_service(&self) -> &QueueServiceClient {
        &self.inner.queue_service
    }

    /// A client for one queue.
    pub fn queue(&self, name: &str) -> Result<QueueClient, Error> {
        self.inner
            .queue_service
            .queue_client(name)
            .map_err(|source| Error::BuildClient {
                service: "queue",
                source: source.into(),
            })
    }

    /// The blob service client.
    pub fn blob_service(&self) -> &BlobServiceClient {
        &self.inner.blob_service
    }

    /// A client for one container.
    pub fn container(&self, name: &str) -> BlobContainerClient {
        self.inner.blob_service.blob_container_client(name)
    }

    /// A client for one blob.
    pub fn blob(&self, container: &str, blob: &str) -> BlobClient {
        self.inner.blob_service.blob_client(container, blob)
    }

    /// A URL that lets anyone read one blob (and nothing else) until `expiry`: a service SAS
    /// for shared-key accounts, a user delegation SAS for Entra ID accounts.
    pub async fn blob_read_url(
        &self,
        container: &str,
        blob: &str,
        expiry: OffsetDateTime,
    ) -> Result<Url, Error> {
        let sas = BlobSas::read_only(container, blob, expiry);
        let token = match &self.inner.auth {
            Auth::SharedKey(key) => sas.sign_with_key(&self.inner.name, key),
            Auth::Entra => {
                let udk = self.delegation_key().await?;
                sas.sign_with_user_delegation(&self.inner.name, &udk)
                    .map_err(|e| Error::SignSas(e.to_string()))?
            }
        };
        // NB: built here rather than taken from the SDK's blob client, which percent-encodes
        // the `/` of virtual directories; browsers get the readable form.
        let mut url = self.container(container).url().clone();
        url.set_query(None);
        url.path_segments_mut()
            .map_err(|_| {
                Error::InvalidEndpoint(format!(
                    "the endpoint of container {container} cannot take a blob path"
                ))
            })?
            .pop_if_empty()
            .extend(blob.split('/'));
        url.set_query(Some(token.as_query()));
        Ok(url)
    }

    async fn delegation_key(&self) -> Result<UserDelegationKey, Error> {
        let mut cached = self.inner.delegation_key.lock().await;
        let now = OffsetDateTime::now_utc();
        if let Some(key) = cached.as_ref() {
            let fresh = crate::sas::parse_sas_time(&key.signed_expiry)
                .is_some_and(|exp| exp - now > DELEGATION_KEY_RENEW_BEFORE);
            if fresh {
                return Ok(key.clone());
            }
        }
        let info = KeyInfo {
            start: Some(now - time::Duration::minutes(5)),
            expiry: Some(now + DELEGATION_KEY_LIFETIME),
            ..Default::default()
        };
        let content: azure_core::http::RequestContent<KeyInfo, azure_core::http::XmlFormat> = info
            .try_into()
            .map_err(|source: azure_core::Error| Error::GetDelegationKey {
                source: source.into(),
            })?;
        let key = self
            .inner
            .blob_service
            .get_user_delegation_key(content, None)
            .await
            .map_err(|source| Error::GetDelegationKey {
                source: source.into(),
            })?
            .into_model()
            .map_err(|source| Error::GetDelegationKey {
                source: source.into(),
            })?;
        let missing = |field: &str| Error::SignSas(format!("user delegation key lacks {field}"));
        let udk = UserDelegationKey {
            signed_oid: key.signed_oid.ok_or_else(|| missing("signedOid"))?,
            signed_tid: key.signed_tid.ok_or_else(|| missing("signedTid"))?,
            signed_start: format_sas_time(key.signed_start.ok_or_else(|| missing("signedStart"))?),
            signed_expiry: format_sas_time(
                key.signed_expiry.ok_or_else(|| missing("signedExpiry"))?,
            ),
            signed_service: key.signed_service.ok_or_else(|| missing("signedService"))?,
            signed_version: key.signed_version.ok_or_else(|| missing("signedVersion"))?,
            value: {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .encode(key.value.ok_or_else(|| missing("value"))?)
            },
        };
        *cached = Some(udk.clone());
        Ok(udk)
    }
}

fn parse_url(s: &str) -> Result<Url, Error> {
    Url::parse(s).map_err(|e| Error::InvalidEndpoint(format!("{s}: {e}")))
}

fn client_options(retry: RetrySettings, sas: Option<Arc<SasPolicy>>) -> ClientOptions {
    // One transport (connection pool) per account; decompression off as the blob SDK requires
    // for its partitioned downloads.
    let transport = Transport::new(new_http_client(Some(HttpClientOptions {
        automatic_decompression: false,
    })));
    let mut options = ClientOptions {
        transport: Some(transport),
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: to_time(retry.initial_delay),
            max_retries: retry.max_retries,
            max_total_elapsed: to_time(retry.max_total),
            max_delay: to_time(retry.max_total),
        }),
        ..Default::default()
    };
    if let Some(sas) = sas {
        options.per_call_policies.push(sas);
    }
    options
        .per_try_policies
        .push(Arc::new(TimeoutPolicy(retry.per_try_timeout)));
    options.per_try_policies.push(Arc::new(CountingPolicy));
    options
}

/// Storage requests sent by this process (every attempt, retries included).
static REQUESTS_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many requests this process has sent to Azure Storage (every attempt of every client
/// built by this crate), for the `cqrs_storage_requests_total` metric.
pub fn requests_sent() -> u64 {
    REQUESTS_SENT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts each attempt on its way out.
#[derive(Debug)]
struct CountingPolicy;

#[async_trait]
impl Policy for CountingPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        REQUESTS_SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        next[0].send(ctx, request, &next[1..]).await
    }
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// Adds a locally signed account SAS to every request that does not already carry one.
#[derive(Debug)]
pub(crate) struct SasPolicy {
    account: String,
    key: AccountKey,
    current: Mutex<Option<(String, OffsetDateTime)>>,
}

impl SasPolicy {
    fn new(account: String, key: AccountKey) -> Self {
        Self {
            account,
            key,
            current: Mutex::new(None),
        }
    }

    fn token(&self) -> String {
        let now = OffsetDateTime::now_utc();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some((token, expiry)) if *expiry - now > ACCOUNT_SAS_RENEW_BEFORE => token.clone(),
            _ => {
                let expiry = now + ACCOUNT_SAS_LIFETIME;
                let sas = AccountSas {
                    services: "bq".into(),
                    resource_types: "sco".into(),
                    permissions: "rwdlacup".into(),
                    // NB: a little in the past, so a skewed clock at the service still accepts it.
                    start: Some(now - time::Duration::minutes(5)),
                    expiry,
                    protocol: None,
                };
                let token = sas.sign(&self.account, &self.key).as_query().to_string();
                *current = Some((token.clone(), expiry));
                token
            }
        }
    }
}

#[async_trait]
impl Policy for SasPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let url = request.url_mut();
        if !url.query_pairs().any(|(k, _)| k == "sig") {
            let query = match url.query() {
                Some(q) if !q.is_empty() => format!("{q}&{}", self.token()),
                _ => self.token(),
            };
            url.set_query(Some(&query));
        }
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// Fails one attempt that takes longer than the limit, so the retry policy can try again and
/// a stalled service never hangs a caller.
#[derive(Debug)]
struct TimeoutPolicy(Duration);

#[async_trait]
impl Policy for TimeoutPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        match tokio::time::timeout(self.0, next[0].send(ctx, request, &next[1..])).await {
            Ok(result) => result,
            Err(_) => Err(azure_core::Error::with_message(
                ErrorKind::Io,
                format!("no response within {:?}", self.0),
            )),
        }
    }
}
