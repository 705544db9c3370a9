//! Azure Storage connection strings.
//!
//! Accepts the forms Azure tooling produces:
//! - `UseDevelopmentStorage=true` (Azurite on its default loopback ports),
//! - `DefaultEndpointsProtocol=https;AccountName=..;AccountKey=..;EndpointSuffix=core.windows.net`,
//! - the same with explicit `BlobEndpoint=..;QueueEndpoint=..` (Azurite on other ports, or
//!   custom domains).
//!
//! Errors name the setting at fault and never echo the account key.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use url::Url;

/// Well-known Azurite account (published in the Azurite and Azure docs).
pub const DEVSTORE_ACCOUNT: &str = "devstoreaccount1";
/// Well-known Azurite key (published in the Azurite and Azure docs; not a secret).
pub const DEVSTORE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Settings Azure connection strings may carry that this crate does not use but must not
/// reject (they are produced by the Azure portal and `az storage account show-connection-string`).
const IGNORED_SETTINGS: &[&str] = &["tableendpoint", "fileendpoint", "tablesecondaryendpoint"];

/// A storage account key: decoded bytes, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountKey(Vec<u8>);

impl AccountKey {
    /// Decodes a base64 account key.
    pub fn from_base64(key: &str) -> Result<Self, ConnectionStringError> {
        BASE64
            .decode(key.trim())
            .ok()
            .filter(|k| !k.is_empty())
            .map(AccountKey)
            .ok_or(ConnectionStringError::InvalidKey)
    }

    /// The raw key bytes (the HMAC key for signing).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey(<redacted>)")
    }
}

/// A parsed connection string for a key-based account (Azurite or Azure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionString {
    /// Storage account name.
    pub account_name: String,
    /// Shared key of the account.
    pub account_key: AccountKey,
    /// Blob service endpoint, without a trailing `/` after a path (path-style for Azurite:
    /// `http://127.0.0.1:10000/devstoreaccount1`), so resource names append cleanly.
    pub blob_endpoint: Url,
    /// Queue service endpoint, in the same form.
    pub queue_endpoint: Url,
}

/// Why a connection string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectionStringError {
    /// Nothing to parse.
    #[error("the connection string is empty")]
    Empty,
    /// A `;`-separated part without `=`.
    #[error("setting #{position} is not of the form Name=Value")]
    MalformedSetting {
        /// 1-based index of the offending part.
        position: usize,
    },
    /// A setting this parser does not know (often a typo).
    #[error(
        "unknown setting {name} (known: UseDevelopmentStorage, DefaultEndpointsProtocol, \
         AccountName, AccountKey, EndpointSuffix, BlobEndpoint, QueueEndpoint)"
    )]
    UnknownSetting {
        /// The setting name as written (quoted), or its position when the name does not look
        /// like a setting name and might be a pasted secret.
        name: String,
    },
    /// The same setting twice.
    #[error("setting `{name}` appears more than once")]
    DuplicateSetting {
        /// The setting name as written.
        name: String,
    },
    /// A required setting is absent.
    #[error("missing `{name}`: {hint}")]
    Missing {
        /// The setting that is needed.
        name: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// `AccountKey` is not base64.
    #[error(
        "`AccountKey` is not valid base64 (copy it again from the portal or `az storage account keys list`)"
    )]
    InvalidKey,
    /// A setting with a value outside its domain.
    #[error("`{name}` has an invalid value: {reason}")]
    InvalidValue {
        /// The setting name.
        name: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// SAS-only connection strings cannot sign per-blob SAS URLs.
    #[error(
        "`SharedAccessSignature` connection strings are not supported: the roles sign per-blob SAS \
         URLs, which needs `AccountKey` (or use `storage.azure` with Entra ID)"
    )]
    SasNotSupported,
}

impl ConnectionString {
    /// The connection string for Azurite on its default ports.
    pub fn development() -> Self {
        Self::development_at("127.0.0.1", 10000, 10001)
    }

    /// The connection string for Azurite on the given host and ports.
    pub fn development_at(host: &str, blob_port: u16, queue_port: u16) -> Self {
        let endpoint = |port: u16| {
            Url::parse(&format!("http://{host}:{port}/{DEVSTORE_ACCOUNT}"))
                .expect("loopback endpoint is a valid URL")
        };
        Self {
            account_name: DEVSTORE_ACCOUNT.into(),
            account_key: AccountKey::from_base64(DEVSTORE_KEY).expect("well-known key is base64"),
            blob_endpoint: endpoint(blob_port),
            queue_endpoint: endpoint(queue_port),
        }
    }

    /// Parses a connection string.
    pub fn parse(input: &str) -> Result<Self, ConnectionStringError> {
        let mut settings = Settings::default();
        let parts = input.split(';').map(str::trim).filter(|p| !p.is_empty());
        let mut any = false;
        for (index, part) in parts.enumerate() {
            any = true;
            let (name, value) =
                part.split_once('=')
                    .ok_or(ConnectionStringError::MalformedSetting {
                        position: index + 1,
                    })?;
            settings.set(name.trim(), value.trim())?;
        }
        if !any {
            return Err(ConnectionStringError::Empty);
        }
        settings.build()
    }

    /// Renders the connection string (with the key) in the explicit-endpoint form, so a child
    /// process sees exactly the endpoints this process uses.
    pub fn to_connection_string(&self) -> String {
        format!(
            "AccountName={};AccountKey={};BlobEndpoint={};QueueEndpoint={}",
            self.account_name,
            BASE64.encode(self.account_key.as_bytes()),
            self.blob_endpoint.as_str().trim_end_matches('/'),
            self.queue_endpoint.as_str().trim_end_matches('/'),
        )
    }
}

#[derive(Default)]
struct Settings {
    development: Option<bool>,
    protocol: Option<String>,
    account_name: Option<String>,
    account_key: Option<String>,
    suffix: Option<String>,
    blob_endpoint: Option<String>,
    queue_endpoint: Option<String>,
    proxy: Option<String>,
}

impl Settings {
    fn set(&mut self, name: &str, value: &str) -> Result<(), ConnectionStringError> {
        let lower = name.to_ascii_lowercase();
        let slot = match lower.as_str() {
            "usedevelopmentstorage" => {
                let flag = match value.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ConnectionStringError::InvalidValue {
                            name: "UseDevelopmentStorage",
                            reason: "expected true or false".into(),
                        });
                    }
                };
                return put(&mut self.development, flag, name);
            }
            "defaultendpointsprotocol" => &mut self.protocol,
            "accountname" => &mut self.account_name,
            "accountkey" => &mut self.account_key,
            "endpointsuffix" => &mut self.suffix,
            "blobendpoint" => &mut self.blob_endpoint,
            "queueendpoint" => &mut self.queue_endpoint,
            "developmentstorageproxyuri" => &mut self.proxy,
            "sharedaccesssignature" => return Err(ConnectionStringError::SasNotSupported),
            other if IGNORED_SETTINGS.contains(&other) => return Ok(()),
            _ => {
                return Err(ConnectionStringError::UnknownSetting {
                    name: describe_name(name),
                });
            }
        };
        put(slot, value.to_string(), name)
    }

    fn build(self) -> Result<ConnectionString, ConnectionStringError> {
        if self.development == Some(true) {
            let mut dev = ConnectionString::development();
            if let Some(proxy) = self.proxy {
                let proxy = parse_endpoint("DevelopmentStorageProxyUri", &proxy)?;
                let host = proxy.host_str().unwrap_or("127.0.0.1").to_string();
                dev = ConnectionString::development_at(&host, 10000, 10001);
            }
            return Ok(dev);
        }
        let account_name = self.account_name.ok_or(ConnectionStringError::Missing {
            name: "AccountName",
            hint: "add AccountName=<storage account> (or use UseDevelopmentStorage=true for Azurite)",
        })?;
        validate_account_name(&account_name)?;
        let key = self.account_key.ok_or(ConnectionStringError::Missing {
            name: "AccountKey",
            hint: "add AccountKey=<base64 key> from `az storage account keys list`",
        })?;
        let account_key = AccountKey::from_base64(&key)?;
        let protocol = match self
            .protocol
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("https") => "https",
            Some("http") => "http",
            Some(_) => {
                return Err(ConnectionStringError::InvalidValue {
                    name: "DefaultEndpointsProtocol",
                    reason: "expected http or https".into(),
                });
            }
        };
        let suffix = self.suffix.as_deref().unwrap_or("core.windows.net");
        let derived = |service: &str| {
            parse_endpoint(
                "EndpointSuffix",
                &format!("{protocol}://{account_name}.{service}.{suffix}"),
            )
        };
        let blob_endpoint = match &self.blob_endpoint {
            Some(e) => parse_endpoint("BlobEndpoint", e)?,
            None => derived("blob")?,
        };
        let queue_endpoint = match &self.queue_endpoint {
            Some(e) => parse_endpoint("QueueEndpoint", e)?,
            None => derived("queue")?,
        };
        Ok(ConnectionString {
            account_name,
            account_key,
            blob_endpoint,
            queue_endpoint,
        })
    }
}

/// Quotes a setting name for an error, unless it could be part of a key: a pasted base64 key
/// splits at its `=` padding into something that looks like a setting name.
fn describe_name(name: &str) -> String {
    if name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphabetic()) {
        format!("`{name}`")
    } else {
        "(a name that is not a known setting and is not shown, in case it is a secret)".into()
    }
}

fn put<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), ConnectionStringError> {
    if slot.is_some() {
        return Err(ConnectionStringError::DuplicateSetting { name: name.into() });
    }
    *slot = Some(value);
    Ok(())
}

fn parse_endpoint(name: &'static str, value: &str) -> Result<Url, ConnectionStringError> {
    let mut url = Url::parse(value).map_err(|e| ConnectionStringError::InvalidValue {
        name,
        reason: format!("not a URL ({e})"),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(ConnectionStringError::InvalidValue {
            name,
            reason: "expected an http:// or https:// URL".into(),
        });
    }
    if url.query().is_some() {
        return Err(ConnectionStringError::InvalidValue {
            name,
            reason: "must not carry a query string (put credentials in AccountKey)".into(),
        });
    }
    // NB: the SDK appends resource names as path segments; a trailing slash would make that
    // `/account//queue`.
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Ok(url)
}

/// Checks the Azure rule for storage account names: 3-24 lowercase letters and digits.
pub fn validate_account_name(name: &str) -> Result<(), ConnectionStringError> {
    let ok = (3..=24).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ConnectionStringError::InvalidValue {
            name: "AccountName",
            reason: "storage account names are 3-24 lowercase letters and digits".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "a2V5LWJ5dGVzLWZvci10ZXN0cw==";

    #[test]
    fn development_storage_points_at_azurite_default_ports() {
        let cs = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(cs.account_name, DEVSTORE_ACCOUNT);
        assert_eq!(
            cs.blob_endpoint.as_str(),
            "http://127.0.0.1:10000/devstoreaccount1"
        );
        assert_eq!(
            cs.queue_endpoint.as_str(),
            "http://127.0.0.1:10001/devstoreaccount1"
        );
    }

    #[test]
    fn account_key_form_derives_https_endpoints_from_suffix() {
        let cs = ConnectionString::parse(&format!(
            "DefaultEndpointsProtocol=https;AccountName=pies;AccountKey={KEY};EndpointSuffix=core.chinacloudapi.cn"
        ))
        .unwrap();
        assert_eq!(
            cs.blob_endpoint.as_str(),
            "https://pies.blob.core.chinacloudapi.cn/"
        );
        assert_eq!(
            cs.queue_endpoint.as_str(),
            "https://pies.queue.core.chinacloudapi.cn/"
        );
        assert_eq!(cs.account_key.as_bytes(), b"key-bytes-for-tests");
    }

    #[test]
    fn explicit_endpoints_win_and_lose_a_trailing_slash() {
        let cs = ConnectionString::parse(&format!(
            "AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:4000/devstoreaccount1/;QueueEndpoint=http://127.0.0.1:4001/devstoreaccount1;"
        ))
        .unwrap();
        assert_eq!(
            cs.blob_endpoint.as_str(),
            "http://127.0.0.1:4000/devstoreaccount1"
        );
        assert_eq!(
            cs.queue_endpoint.as_str(),
            "http://127.0.0.1:4001/devstoreaccount1"
        );
    }

    #[test]
    fn round_trips_through_explicit_form() {
        let cs = ConnectionString::development_at("127.0.0.1", 1234, 1235);
        assert_eq!(
            ConnectionString::parse(&cs.to_connection_string()).unwrap(),
            cs
        );
    }

    #[test]
    fn setting_names_are_case_insensitive_and_table_endpoints_ignored() {
        let cs = ConnectionString::parse(&format!(
            "accountname=pies;ACCOUNTKEY={KEY};TableEndpoint=https://pies.table.core.windows.net"
        ))
        .unwrap();
        assert_eq!(cs.account_name, "pies");
    }

    #[test]
    fn errors_name_the_problem_and_never_echo_the_key() {
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ=";
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "empty"),
            (" ; ".into(), "empty"),
            (format!("AccountName=pies;{secret}"), "not shown"),
            ("AccountName=pies;AccountKey".into(), "setting #2"),
            (
                format!("AccountName=pies;AccountKye={secret}"),
                "unknown setting `AccountKye`",
            ),
            (format!("AccountKey={secret}"), "missing `AccountName`"),
            ("AccountName=pies".into(), "missing `AccountKey`"),
            (
                "AccountName=pies;AccountKey=not*base64!".into(),
                "not valid base64",
            ),
            (
                format!("AccountName=Pies;AccountKey={secret}"),
                "3-24 lowercase",
            ),
            (
                format!("AccountName=pies;AccountName=tarts;AccountKey={secret}"),
                "more than once",
            ),
            (
                format!("AccountName=pies;AccountKey={secret};BlobEndpoint=ftp://x"),
                "`BlobEndpoint`",
            ),
            (
                format!("AccountName=pies;AccountKey={secret};QueueEndpoint=nope"),
                "`QueueEndpoint`",
            ),
            (
                format!("AccountName=pies;AccountKey={secret};DefaultEndpointsProtocol=gopher"),
                "http or https",
            ),
            ("UseDevelopmentStorage=yes".into(), "true or false"),
            (
                "SharedAccessSignature=sv=2020&sig=abc".into(),
                "not supported",
            ),
        ];
        for (input, expected) in cases {
            let err = ConnectionString::parse(&input)
                .expect_err(&input)
                .to_string();
            assert!(
                err.contains(expected),
                "{input:?}: {err:?} should contain {expected:?}"
            );
            assert!(!err.contains(secret), "error echoes the key: {err}");
        }
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let cs = ConnectionString::development();
        let debug = format!("{cs:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("Eby8"));
    }
}
