//! Shared access signatures (SAS), signed locally.
//!
//! The 1.x Azure Storage SDK for Rust authenticates with Entra ID only; it has no shared-key
//! signer. Key-based accounts (and Azurite, which has no Entra ID over http) are therefore
//! reached with SAS tokens signed here from the account key. Browsers get a read-only,
//! single-blob service SAS (signed with the account key, or with a user delegation key on
//! Entra ID accounts).
//!
//! The string-to-sign layouts follow the Azure Storage REST documentation ("Create an account
//! SAS", "Create a service SAS", "Create a user delegation SAS") for [`SAS_VERSION`]; they are
//! checked byte-for-byte against vectors produced by the official Python SDK
//! (`storage/testdata/sas_vectors.json`).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Iso8601;

use crate::connection::AccountKey;

/// The storage service version every SAS is signed for (`sv`). The layouts below are those
/// of this version; it is the version the official SDKs sign with at the time of writing.
pub const SAS_VERSION: &str = "2026-10-06";

/// Characters left unescaped in SAS query values: RFC 3986 unreserved plus `/`, exactly as
/// the official SDKs encode them, so tokens are byte-identical.
const SAS_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Protocols a SAS may be used over (`spr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SasProtocol {
    /// `https` only (recommended for real accounts).
    Https,
    /// `https,http` (needed for Azurite and other http endpoints).
    HttpsAndHttp,
}

impl SasProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SasProtocol::Https => "https",
            SasProtocol::HttpsAndHttp => "https,http",
        }
    }
}

/// A signed SAS query string (without the leading `?`).
///
/// It is a bearer credential: `Debug` hides the signature.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken(String);

impl SasToken {
    /// The query string, for appending to a resource URL.
    pub fn as_query(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let visible: Vec<&str> = self
            .0
            .split('&')
            .filter(|p| !p.starts_with("sig="))
            .collect();
        write!(f, "SasToken({}&sig=<redacted>)", visible.join("&"))
    }
}

/// An account SAS: access to whole services of an account.
#[derive(Clone, Debug)]
pub struct AccountSas {
    /// Services (`ss`), e.g. `bq` for blob and queue.
    pub services: String,
    /// Resource types (`srt`), e.g. `sco` for service, container and object.
    pub resource_types: String,
    /// Permissions (`sp`), in the canonical order `rwdxylacuptfi`.
    pub permissions: String,
    /// Start of validity (`st`); `None` means "now" at the service.
    pub start: Option<OffsetDateTime>,
    /// End of validity (`se`).
    pub expiry: OffsetDateTime,
    /// Allowed protocols (`spr`); `None` leaves it out.
    pub protocol: Option<SasProtocol>,
}

impl AccountSas {
    /// Signs the SAS with the account key.
    pub fn sign(&self, account_name: &str, key: &AccountKey) -> SasToken {
        let mut q = Query::base(self.start, self.expiry, &self.permissions, self.protocol);
        q.push("ss", Some(self.services.clone()));
        q.push("srt", Some(self.resource_types.clone()));
        let to_sign = [
            account_name,
            &self.permissions,
            &self.services,
            &self.resource_types,
            q.get("st"),
            q.get("se"),
            "", // sip
            q.get("spr"),
            SAS_VERSION,
            "", // ses (encryption scope)
            "",
        ]
        .join("\n");
        q.sign(key.as_bytes(), &to_sign)
    }
}

/// A user delegation key, obtained with Entra ID from the blob service
/// (`Get User Delegation Key`); it signs SAS tokens instead of the account key.
#[derive(Clone)]
pub struct UserDelegationKey {
    /// `skoid`: object id of the principal that requested the key.
    pub signed_oid: String,
    /// `sktid`: its tenant id.
    pub signed_tid: String,
    /// `skt`: key validity start, as returned by the service.
    pub signed_start: String,
    /// `ske`: key validity end, as returned by the service.
    pub signed_expiry: String,
    /// `sks`: service the key is for (`b`).
    pub signed_service: String,
    /// `skv`: service version that issued the key.
    pub signed_version: String,
    /// The key itself, base64 as returned by the service.
    pub value: String,
}

impl fmt::Debug for UserDelegationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserDelegationKey")
            .field("signed_oid", &self.signed_oid)
            .field("signed_expiry", &self.signed_expiry)
            .finish_non_exhaustive()
    }
}

/// A service SAS for one blob.
#[derive(Clone, Debug)]
pub struct BlobSas {
    /// Container name.
    pub container: String,
    /// Blob name.
    pub blob: String,
    /// Permissions (`sp`) in canonical order, e.g. `r` for read-only.
    pub permissions: String,
    /// Start of validity (`st`).
    pub start: Option<OffsetDateTime>,
    /// End of validity (`se`).
    pub expiry: OffsetDateTime,
    /// Allowed protocols (`spr`).
    pub protocol: Option<SasProtocol>,
    /// Content-Type the service answers with when the SAS is used (`rsct`).
    pub content_type: Option<String>,
}

impl BlobSas {
    /// A read-only SAS for one blob, valid until `expiry`.
    pub fn read_only(container: &str, blob: &str, expiry: OffsetDateTime) -> Self {
        Self {
            container: container.into(),
            blob: blob.into(),
            permissions: "r".into(),
            start: None,
            expiry,
            protocol: None,
            content_type: None,
        }
    }

    fn canonical_resource(&self, account_name: &str) -> String {
        format!("/blob/{account_name}/{}/{}", self.container, self.blob)
    }

    fn query(&self) -> Query {
        let mut q = Query::base(self.start, self.expiry, &self.permissions, self.protocol);
        q.push("sr", Some("b".into()));
        q.push("rsct", self.content_type.clone());
        q
    }

    /// Signs with the account key (service SAS).
    pub fn sign_with_key(&self, account_name: &str, key: &AccountKey) -> SasToken {
        let q = self.query();
        let to_sign = [
            &self.permissions,
            q.get("st"),
            q.get("se"),
            &self.canonical_resource(account_name),
            "", // si (stored access policy)
            "", // sip
            q.get("spr"),
            SAS_VERSION,
            "b",
            "", // snapshot time
            "", // ses
            "", // rscc
            "", // rscd
            "", // rsce
            "", // rscl
            q.get("rsct"),
        ]
        .join("\n");
        q.sign(key.as_bytes(), &to_sign)
    }

    /// Signs with a user delegation key (user delegation SAS, for Entra ID accounts).
    pub fn sign_with_user_delegation(
        &self,
        account_name: &str,
        udk: &UserDelegationKey,
    ) -> Result<SasToken, InvalidDelegationKey> {
        let key = BASE64
            .decode(&udk.value)
            .map_err(|_| InvalidDelegationKey)?;
        let mut q = self.query();
        for (name, value) in [
            ("skoid", &udk.signed_oid),
            ("sktid", &udk.signed_tid),
            ("skt", &udk.signed_start),
            ("ske", &udk.signed_expiry),
            ("sks", &udk.signed_service),
            ("skv", &udk.signed_version),
        ] {
            q.push(name, Some(value.clone()));
        }
        let to_sign = [
            &self.permissions,
            q.get("st"),
            q.get("se"),
            &self.canonical_resource(account_name),
            &udk.signed_oid,
            &udk.signed_tid,
            &udk.signed_start,
            &udk.signed_expiry,
            &udk.signed_service,
            &udk.signed_version,
            "", // saoid
            "", // suoid
            "", // scid
            "", // skdutid
            "", // sduoid
            "", // sip
            q.get("spr"),
            SAS_VERSION,
            "b",
            "", // snapshot time
            "", // ses
            "", // srh
            "", // srq
            "", // rscc
            "", // rscd
            "", // rsce
            "", // rscl
            q.get("rsct"),
        ]
        .join("\n");
        Ok(q.sign(&key, &to_sign))
    }
}

/// The user delegation key's value is not base64.
#[derive(Debug, thiserror::Error)]
#[error("the user delegation key returned by the blob service is not valid base64")]
pub struct InvalidDelegationKey;

/// Formats a SAS time the way Azure expects it: UTC, second precision, `Z` suffix.
pub fn format_sas_time(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    let date = t.date();
    let clock = t.time();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        date.year(),
        u8::from(date.month()),
        date.day(),
        clock.hour(),
        clock.minute(),
        clock.second()
    )
}

/// Parses a SAS or service time (`2026-11-22T10:00:00Z`).
pub fn parse_sas_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Iso8601::DEFAULT).ok()
}

/// Ordered SAS query parameters, in the order the official SDKs emit them.
struct Query(Vec<(&'static str, String)>);

impl Query {
    fn base(
        start: Option<OffsetDateTime>,
        expiry: OffsetDateTime,
        permissions: &str,
        protocol: Option<SasProtocol>,
    ) -> Self {
        let mut q = Query(Vec::with_capacity(12));
        q.push("st", start.map(format_sas_time));
        q.push("se", Some(format_sas_time(expiry)));
        q.push("sp", Some(permissions.into()));
        q.push("spr", protocol.map(|p| p.as_str().into()));
        q.push("sv", Some(SAS_VERSION.into()));
        q
    }

    fn push(&mut self, name: &'static str, value: Option<String>) {
        if let Some(value) = value {
            self.0.push((name, value));
        }
    }

    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn sign(mut self, key: &[u8], string_to_sign: &str) -> SasToken {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(string_to_sign.as_bytes());
        self.0
            .push(("sig", BASE64.encode(mac.finalize().into_bytes())));
        let query = self
            .0
            .iter()
            .map(|(n, v)| format!("{n}={}", utf8_percent_encode(v, SAS_VALUE)))
            .collect::<Vec<_>>()
            .join("&");
        SasToken(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn sas_times_are_utc_seconds_with_z() {
        let t = datetime!(2026-11-22 10:15:30.999 +02:00);
        assert_eq!(format_sas_time(t), "2026-11-22T08:15:30Z");
        assert_eq!(
            parse_sas_time("2026-11-22T08:15:30Z").unwrap(),
            datetime!(2026-11-22 08:15:30 UTC)
        );
    }

    #[test]
    fn read_only_blob_sas_carries_only_read_permission_and_one_blob() {
        let key = AccountKey::from_base64("a2V5").unwrap();
        let token = BlobSas::read_only("results", "r/abc.json", datetime!(2026-01-01 0:00 UTC))
            .sign_with_key("acct", &key);
        let q = token.as_query();
        assert!(q.starts_with("se=2026-01-01T00%3A00%3A00Z&sp=r&sv="), "{q}");
        assert!(q.contains("&sr=b&sig="), "{q}");
    }

    #[test]
    fn debug_hides_the_signature() {
        let key = AccountKey::from_base64("a2V5").unwrap();
        let token =
            BlobSas::read_only("c", "b", datetime!(2026-01-01 0:00 UTC)).sign_with_key("a", &key);
        let debug = format!("{token:?}");
        assert!(
            debug.contains("sig=<redacted>")
                && !debug.contains(&token.as_query()[token.as_query().len() - 10..])
        );
    }
}
