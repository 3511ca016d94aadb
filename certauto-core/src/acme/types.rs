//! ACME resources as they appear on the wire (RFC 8555 §7.1).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::acme::problem::Problem;
use crate::identifier::Identifier;

/// The directory object, [RFC 8555 §7.1.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Directory {
    /// New nonce URL.
    pub new_nonce: String,
    /// New account URL.
    pub new_account: String,
    /// New order URL.
    pub new_order: String,
    /// New authorization URL (pre-authorization), if supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_authz: Option<String>,
    /// Revoke certificate URL.
    pub revoke_cert: String,
    /// Key change URL.
    pub key_change: String,
    /// ACME Renewal Information URL (RFC 9773), if offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_info: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: DirectoryMeta,
}

/// The directory's `meta` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DirectoryMeta {
    /// URL of the current terms of service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms_of_service: Option<String>,
    /// The CA's website.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub website: Option<String>,
    /// CAA identities of the CA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caa_identities: Vec<String>,
    /// Whether new accounts need External Account Binding.
    #[serde(default)]
    pub external_account_required: bool,
    /// The certificate profiles the CA offers, name to description
    /// ([draft-ietf-acme-profiles §3](https://datatracker.ietf.org/doc/draft-ietf-acme-profiles/));
    /// empty when the CA has none. An order names one in its `profile` field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub profiles: BTreeMap<String, String>,
}

/// An identifier on the wire: `{"type": "dns", "value": "example.com"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WireIdentifier {
    /// `dns` or `ip`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The name or address.
    pub value: String,
}

impl From<&Identifier> for WireIdentifier {
    fn from(id: &Identifier) -> Self {
        WireIdentifier {
            type_: id.acme_type().to_owned(),
            value: id.as_str().into_owned(),
        }
    }
}

impl WireIdentifier {
    /// Parses the wire identifier back into a validated [`Identifier`].
    pub fn to_identifier(&self) -> Option<Identifier> {
        let id = Identifier::parse(&self.value).ok()?;
        (id.acme_type() == self.type_).then_some(id)
    }
}

/// Account status, §7.1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AccountStatus {
    /// Usable.
    Valid,
    /// Deactivated by the client.
    Deactivated,
    /// Revoked by the server.
    Revoked,
}

/// An account object, [RFC 8555 §7.1.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AccountResource {
    /// Status.
    pub status: AccountStatus,
    /// Contact URLs (`mailto:`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact: Vec<String>,
    /// Whether the terms of service were agreed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms_of_service_agreed: Option<bool>,
    /// URL of the account's orders list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orders: Option<String>,
}

/// Order status, §7.1.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OrderStatus {
    /// Authorizations are pending.
    Pending,
    /// All authorizations are valid; finalize now.
    Ready,
    /// The CA is issuing.
    Processing,
    /// Issued.
    Valid,
    /// Failed.
    Invalid,
}

/// An order object, [RFC 8555 §7.1.3](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct OrderResource {
    /// Status.
    pub status: OrderStatus,
    /// When the order expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The identifiers.
    pub identifiers: Vec<WireIdentifier>,
    /// Requested notBefore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// Requested notAfter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// The error that made the order invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
    /// Authorization URLs.
    #[serde(default)]
    pub authorizations: Vec<String>,
    /// Finalize URL.
    pub finalize: String,
    /// Certificate URL, once valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The ARI CertID of the certificate this order replaces (RFC 9773).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// The certificate profile the order was placed with (draft-ietf-acme-profiles), if the
    /// CA says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// The payload of a newOrder request, §7.4 (plus RFC 9773's `replaces` and
/// draft-ietf-acme-profiles' `profile`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewOrderRequest<'a> {
    pub(crate) identifiers: Vec<WireIdentifier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) replaces: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) profile: Option<&'a str>,
}

/// Authorization status, §7.1.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AuthorizationStatus {
    /// Waiting for a challenge.
    Pending,
    /// Proven.
    Valid,
    /// Failed.
    Invalid,
    /// Deactivated by the client.
    Deactivated,
    /// Expired.
    Expired,
    /// Revoked by the server.
    Revoked,
}

/// An authorization object, [RFC 8555 §7.1.4](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AuthorizationResource {
    /// The identifier being authorized (without `*.` for wildcards).
    pub identifier: WireIdentifier,
    /// Status.
    pub status: AuthorizationStatus,
    /// Expiry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The challenges offered.
    #[serde(default)]
    pub challenges: Vec<ChallengeResource>,
    /// Whether this authorization is for a wildcard name.
    #[serde(default)]
    pub wildcard: bool,
}

/// Challenge types, RFC 8555 §8 and RFC 8737.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ChallengeType {
    /// `http-01`, §8.3.
    Http01,
    /// `dns-01`, §8.4.
    Dns01,
    /// `tls-alpn-01`, RFC 8737.
    TlsAlpn01,
    /// Any other type, kept verbatim.
    Other(String),
}

impl ChallengeType {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            ChallengeType::Http01 => "http-01",
            ChallengeType::Dns01 => "dns-01",
            ChallengeType::TlsAlpn01 => "tls-alpn-01",
            ChallengeType::Other(s) => s,
        }
    }

    fn from_wire(s: &str) -> Self {
        match s {
            "http-01" => ChallengeType::Http01,
            "dns-01" => ChallengeType::Dns01,
            "tls-alpn-01" => ChallengeType::TlsAlpn01,
            other => ChallengeType::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for ChallengeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ChallengeType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ChallengeType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ChallengeType::from_wire(&s))
    }
}

/// Challenge status, §7.1.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ChallengeStatus {
    /// Not yet attempted.
    Pending,
    /// Being validated.
    Processing,
    /// Passed.
    Valid,
    /// Failed.
    Invalid,
}

/// A challenge object, [RFC 8555 §7.1.5](https://www.rfc-editor.org/rfc/rfc8555#section-7.1.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ChallengeResource {
    /// The challenge type.
    #[serde(rename = "type")]
    pub type_: ChallengeType,
    /// The challenge URL.
    pub url: String,
    /// Status.
    pub status: ChallengeStatus,
    /// The token (for http-01, dns-01 and tls-alpn-01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When it was validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validated: Option<String>,
    /// Why validation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

/// Revocation reasons, RFC 5280 §5.3.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationReason {
    /// 0
    Unspecified,
    /// 1
    KeyCompromise,
    /// 3
    AffiliationChanged,
    /// 4
    Superseded,
    /// 5
    CessationOfOperation,
}

impl RevocationReason {
    /// The RFC 5280 reason code.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The directory example of RFC 8555 §7.1.1.
    #[test]
    fn parses_rfc_directory() {
        let json = r#"{
         "newNonce": "https://example.com/acme/new-nonce",
         "newAccount": "https://example.com/acme/new-account",
         "newOrder": "https://example.com/acme/new-order",
         "newAuthz": "https://example.com/acme/new-authz",
         "revokeCert": "https://example.com/acme/revoke-cert",
         "keyChange": "https://example.com/acme/key-change",
         "meta": {
           "termsOfService": "https://example.com/acme/terms/2017-5-30",
           "website": "https://www.example.com/",
           "caaIdentities": ["example.com"],
           "externalAccountRequired": false
         }
       }"#;
        let d: Directory = serde_json::from_str(json).unwrap();
        assert_eq!(d.new_order, "https://example.com/acme/new-order");
        assert_eq!(d.meta.caa_identities, vec!["example.com"]);
        assert!(d.renewal_info.is_none());
    }

    /// The order example of RFC 8555 §7.1.3.
    #[test]
    fn parses_rfc_order() {
        let json = r#"{
         "status": "valid",
         "expires": "2016-01-20T14:09:07.99Z",
         "identifiers": [
           { "type": "dns", "value": "www.example.org" },
           { "type": "dns", "value": "example.org" }
         ],
         "notBefore": "2016-01-01T00:00:00Z",
         "notAfter": "2016-01-08T00:00:00Z",
         "authorizations": [
           "https://example.com/acme/authz/PAniVnsZcis",
           "https://example.com/acme/authz/r4HqLzrSrpI"
         ],
         "finalize": "https://example.com/acme/order/TOlocE8rfgo/finalize",
         "certificate": "https://example.com/acme/cert/mAt3xBGaobw"
       }"#;
        let o: OrderResource = serde_json::from_str(json).unwrap();
        assert_eq!(o.status, OrderStatus::Valid);
        assert_eq!(o.authorizations.len(), 2);
        assert_eq!(
            o.identifiers[0].to_identifier().unwrap().as_str(),
            "www.example.org"
        );
    }

    /// The authorization example of RFC 8555 §7.1.4.
    #[test]
    fn parses_rfc_authorization() {
        let json = r#"{
         "status": "valid",
         "expires": "2015-03-01T14:09:07.99Z",
         "identifier": { "type": "dns", "value": "www.example.org" },
         "challenges": [
           {
             "url": "https://example.com/acme/chall/prV_B7yEyA4",
             "type": "http-01",
             "status": "valid",
             "token": "DGyRejmCefe7v4NfDGDKfA",
             "validated": "2014-12-01T12:05:58.16Z"
           },
           {
             "url": "https://example.com/acme/chall/xyz",
             "type": "new-01",
             "status": "pending"
           }
         ],
         "wildcard": false
       }"#;
        let a: AuthorizationResource = serde_json::from_str(json).unwrap();
        assert_eq!(a.status, AuthorizationStatus::Valid);
        assert_eq!(a.challenges[0].type_, ChallengeType::Http01);
        assert_eq!(a.challenges[1].type_, ChallengeType::Other("new-01".into()));
    }

    /// A directory and an order in the shape draft-ietf-acme-profiles gives them
    /// (`meta.profiles` maps names to descriptions; an order carries `profile`).
    #[test]
    fn parses_profiles_draft_examples() {
        let json = r#"{
         "newNonce": "https://example.com/acme/new-nonce",
         "newAccount": "https://example.com/acme/new-account",
         "newOrder": "https://example.com/acme/new-order",
         "revokeCert": "https://example.com/acme/revoke-cert",
         "keyChange": "https://example.com/acme/key-change",
         "meta": {
           "profiles": {
             "profile1": "https://example.com/acme/docs/profiles#profile1",
             "profile2": "https://example.com/acme/docs/profiles#profile2"
           }
         }
       }"#;
        let d: Directory = serde_json::from_str(json).unwrap();
        assert_eq!(
            d.meta.profiles.get("profile2").map(String::as_str),
            Some("https://example.com/acme/docs/profiles#profile2")
        );
        assert_eq!(d.meta.profiles.len(), 2);

        let json = r#"{
         "status": "pending",
         "expires": "2016-01-05T14:09:07.99Z",
         "identifiers": [
           { "type": "dns", "value": "www.example.org" },
           { "type": "dns", "value": "example.org" }
         ],
         "profile": "profile1",
         "authorizations": [
           "https://example.com/acme/authz/PAniVnsZcis",
           "https://example.com/acme/authz/r4HqLzrSrpI"
         ],
         "finalize": "https://example.com/acme/order/TOlocE8rfgo/finalize"
       }"#;
        let o: OrderResource = serde_json::from_str(json).unwrap();
        assert_eq!(o.profile.as_deref(), Some("profile1"));

        let request = NewOrderRequest {
            identifiers: o.identifiers.clone(),
            replaces: None,
            profile: Some("profile1"),
        };
        let sent = serde_json::to_value(&request).unwrap();
        assert_eq!(sent["profile"], "profile1");
        assert!(sent.get("replaces").is_none());
        let without = NewOrderRequest {
            profile: None,
            ..request
        };
        assert!(
            serde_json::to_value(&without)
                .unwrap()
                .get("profile")
                .is_none()
        );
    }

    /// The account example of RFC 8555 §7.1.2.
    #[test]
    fn parses_rfc_account() {
        let json = r#"{
         "status": "valid",
         "contact": [
           "mailto:cert-admin@example.org",
           "mailto:admin@example.org"
         ],
         "termsOfServiceAgreed": true,
         "orders": "https://example.com/acme/orders/rzGoeA"
       }"#;
        let a: AccountResource = serde_json::from_str(json).unwrap();
        assert_eq!(a.status, AccountStatus::Valid);
        assert_eq!(a.contact.len(), 2);
    }
}
