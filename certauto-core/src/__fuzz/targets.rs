//! The body of every fuzz target: feed the input to the real parser, and
//! when it is accepted check the invariants that hold for what it returns.
//! A broken invariant panics (that is how libFuzzer sees a finding); a
//! refused input returns quietly. `fuzz/fuzz_targets/<name>.rs` calls the
//! function of the same name; `tests/fuzz_regressions.rs` replays every
//! input kept under `fuzz/regressions/<name>/` through it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::acme::jws::{AccountKey, ExternalAccountKey};
use crate::acme::problem::Problem;
use crate::acme::{
    AuthorizationResource, ChallengeResource, Directory, OrderResource, PemChain, WireIdentifier,
};
use crate::certificate::Certificate;
use crate::identifier::Identifier;
use crate::keys::CertificateKey;
use crate::storage::{keys, validate_key};

/// A fixed "now" (2030-01-01T00:00:00Z, inside the validity of the fixtures in `fuzz/fixtures`), so a finding replays the same.
fn fixed_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

/// The JSON round trip every wire document must survive: what was parsed,
/// written and parsed again is what was parsed.
fn json_round_trip<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let parsed: T = serde_json::from_slice(data).ok()?;
    let written = match serde_json::to_vec(&parsed) {
        Ok(w) => w,
        Err(e) => panic!("a parsed document cannot be written back: {e}"),
    };
    match serde_json::from_slice::<T>(&written) {
        Ok(again) => assert_eq!(parsed, again, "the JSON round trip changed the document"),
        Err(e) => panic!("what was written back does not parse: {e}"),
    }
    Some(parsed)
}

/// A wire identifier that CertAuto accepts maps back to itself.
fn check_wire_identifier(wire: &WireIdentifier) {
    if let Some(id) = wire.to_identifier() {
        check_identifier_invariants(&id);
        assert_eq!(
            WireIdentifier::from(&id).to_identifier(),
            Some(id),
            "a wire identifier does not round-trip"
        );
    }
}

fn check_problem(problem: &Problem) {
    let _ = problem.kind();
    let _ = problem.is_bad_nonce();
    let _ = problem.to_string();
    for sub in &problem.subproblems {
        let _ = sub.kind();
        let _ = sub.to_string();
        if let Some(id) = &sub.identifier {
            check_wire_identifier(id);
        }
    }
}

/// The ACME directory document (RFC 8555 §7.1.1).
pub fn acme_directory(data: &[u8]) {
    let _ = json_round_trip::<Directory>(data);
}

/// The ACME order document (§7.1.3).
pub fn acme_order(data: &[u8]) {
    if let Some(order) = json_round_trip::<OrderResource>(data) {
        order.identifiers.iter().for_each(check_wire_identifier);
        if let Some(problem) = &order.error {
            check_problem(problem);
        }
    }
}

/// The ACME authorization document (§7.1.4).
pub fn acme_authorization(data: &[u8]) {
    if let Some(authz) = json_round_trip::<AuthorizationResource>(data) {
        check_wire_identifier(&authz.identifier);
        for challenge in &authz.challenges {
            let _ = challenge.type_.to_string();
            if let Some(problem) = &challenge.error {
                check_problem(problem);
            }
        }
    }
}

/// The ACME challenge document (§7.1.5, §8).
pub fn acme_challenge(data: &[u8]) {
    if let Some(challenge) = json_round_trip::<ChallengeResource>(data) {
        assert_eq!(
            challenge.type_.to_string(),
            challenge.type_.as_str(),
            "challenge type display"
        );
        if let Some(problem) = &challenge.error {
            check_problem(problem);
        }
    }
}

/// The problem document (RFC 7807, RFC 8555 §6.7).
pub fn acme_problem(data: &[u8]) {
    if let Some(problem) = json_round_trip::<Problem>(data) {
        check_problem(&problem);
    }
}

/// The ARI `renewalInfo` document (RFC 9773 §4.2).
pub fn renewal_info(data: &[u8]) {
    if let Ok(info) = super::renewal_info(data) {
        assert!(
            info.window_start < info.window_end,
            "an accepted window ends after it starts"
        );
    }
}

/// Account keys: PEM (PKCS#8), PKCS#8 DER, and EAB MAC keys. The first
/// byte chooses the form. An accepted key writes back to the same key, and
/// its JWK thumbprint is the 43-character base64url SHA-256 RFC 7638 gives.
pub fn account_key(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = match mode % 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(pem) => AccountKey::from_pem(pem).ok(),
            Err(_) => None,
        },
        1 => AccountKey::from_pkcs8_der(rest).ok(),
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = ExternalAccountKey::new("kid", text);
            }
            None
        }
    };
    let Some(key) = key else { return };
    let thumbprint = key.thumbprint().to_owned();
    assert_eq!(thumbprint, key.jwk().thumbprint(), "cached thumbprint");
    assert_eq!(thumbprint.len(), 43, "a SHA-256 thumbprint in base64url");
    assert!(
        thumbprint
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "thumbprint is base64url"
    );
    assert_eq!(key.key_authorization("tok"), format!("tok.{thumbprint}"));
    if let Err(e) = key.sign(b"fuzz") {
        panic!("an accepted account key cannot sign: {e}");
    }
    let jwk = serde_json::to_value(key.jwk()).unwrap_or_default();
    assert!(jwk.get("kty").is_some(), "a JWK names its key type");
    let again = match AccountKey::from_pem(&key.to_pem()) {
        Ok(k) => k,
        Err(e) => panic!("an accepted account key does not reload from its PEM: {e}"),
    };
    assert_eq!(again.jwk(), key.jwk(), "the PEM round trip changed the key");
    assert_eq!(again.alg(), key.alg());
}

/// Certificate private keys: PKCS#8, SEC1 and PKCS#1 PEM. An accepted key
/// writes back (as PKCS#8) to the same key, and can sign a CSR.
pub fn certificate_key(data: &[u8]) {
    let Ok(pem) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(key) = CertificateKey::from_pem(pem) else {
        return;
    };
    let again = match CertificateKey::from_pem(&key.to_pem()) {
        Ok(k) => k,
        Err(e) => panic!("an accepted certificate key does not reload: {e}"),
    };
    assert_eq!(again.key_type(), key.key_type(), "key type changed");
    assert_eq!(again.public_key_der(), key.public_key_der(), "key changed");
    let names = [Identifier::Dns(
        crate::identifier::DomainName::parse("example.com").unwrap_or_else(|e| panic!("{e}")),
    )];
    if let Err(e) = key.csr(&names) {
        panic!("an accepted key cannot sign a CSR: {e}");
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    crate::keys::pem_encode(label, der)
}

/// Certificate chains. The first byte chooses the form: PEM text, or DER
/// certificates (each preceded by a two-byte big-endian length). The chain
/// is loaded with `key_pem`, the key of the seed certificates, so mutated
/// certificates that keep their public key reach the name, validity and
/// extension parsing. `issuer_der` is a CA certificate for the OCSP request.
pub fn cert_chain(data: &[u8], key_pem: &str, issuer_der: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chain_pem = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    } else {
        let mut pem = String::new();
        let mut rest = rest;
        while let [hi, lo, tail @ ..] = rest {
            let len = usize::from(*hi) << 8 | usize::from(*lo);
            let take = len.min(tail.len());
            pem.push_str(&pem_block("CERTIFICATE", &tail[..take]));
            rest = &tail[take..];
        }
        pem
    };
    let chain = PemChain {
        url: "fuzz:chain".into(),
        pem: chain_pem.clone(),
    };
    let _ = chain.issuer_common_names();
    let _ = crate::acme::http::parse_pem_roots(chain_pem.as_bytes());
    let Ok(cert) = Certificate::from_pem(&chain_pem, key_pem, "fuzz") else {
        return;
    };
    check_certificate(&cert);
    let _ = crate::ocsp::request(cert.leaf(), issuer_der);
    if let Some(second) = cert.chain().get(1) {
        let _ = crate::ocsp::request(cert.leaf(), second);
    }
}

/// What holds for every certificate CertAuto accepted.
fn check_certificate(cert: &Certificate) {
    for name in cert.names() {
        check_identifier_invariants(name);
        assert!(cert.covers(name), "a certificate covers its own names");
    }
    assert!(!cert.chain().is_empty());
    let now = fixed_now();
    let _ = cert.lifetime();
    let due = cert.renewal_time(crate::DEFAULT_RENEWAL_RATIO);
    assert!(
        cert.not_before() <= cert.not_after() || due == cert.not_before(),
        "renewal time of an inverted validity"
    );
    let _ = cert.needs_renewal(now, crate::DEFAULT_RENEWAL_RATIO);
    let _ = cert.is_expired(now);
    let _ = cert.ari_cert_id();
    let _ = cert.serial_hex();
    let meta = cert.metadata();
    let text = serde_json::to_vec(&meta).unwrap_or_default();
    match serde_json::from_slice::<crate::certificate::CertificateMetadata>(&text) {
        Ok(again) => assert_eq!(again, meta, "metadata round trip"),
        Err(e) => panic!("metadata does not read back: {e}"),
    }
    // The record CertAuto would store loads back to the same certificate.
    let record = super::cert_record_text(cert);
    match super::cert_record(record.as_bytes(), cert.issuer_key()) {
        Ok(again) => {
            assert_eq!(again.names(), cert.names(), "record round trip: names");
            assert_eq!(again.serial(), cert.serial(), "record round trip: serial");
            assert_eq!(again.chain(), cert.chain(), "record round trip: chain");
            assert_eq!(again.not_after(), cert.not_after());
        }
        Err(e) => panic!("the record of an accepted certificate does not load: {e}"),
    }
}

/// A stored certificate record as loading reads it (UTF-8 PEM: key, then chain).
pub fn cert_record(data: &[u8]) {
    if let Ok(cert) = super::cert_record(data, "fuzz") {
        check_certificate(&cert);
    }
}

/// OCSP responses: the DER parser alone (no signature), then the whole
/// verification against `leaf_der` issued by `issuer_der`.
pub fn ocsp_response(data: &[u8], leaf_der: &[u8], issuer_der: &[u8]) {
    let _ = super::ocsp_response(data);
    let now = fixed_now();
    if let Ok(resp) = crate::ocsp::verify(data, leaf_der, issuer_der, now) {
        assert!(resp.this_update() <= resp.next_update());
        assert!(resp.next_update() > now, "a verified response is fresh");
        let refresh = resp.refresh_at();
        assert!(resp.this_update() <= refresh && refresh <= resp.next_update());
        assert_eq!(resp.der(), data);
    }
}

/// What holds for every accepted identifier: parsing is idempotent, the
/// text is normalised, and every storage key built from it is valid and
/// maps back to it.
pub fn check_identifier_invariants(id: &Identifier) {
    let text = id.as_str();
    match Identifier::parse(&text) {
        Ok(again) => assert_eq!(&again, id, "parsing is not idempotent for {text:?}"),
        Err(e) => panic!("the normalised form {text:?} is refused: {e}"),
    }
    if let Identifier::Dns(name) = id {
        assert!(text.len() <= 253, "a DNS name of at most 253 characters");
        assert!(!text.ends_with('.'), "no trailing dot");
        assert!(
            !text
                .bytes()
                .any(|b| b.is_ascii_uppercase() || !b.is_ascii()),
            "lower-case ASCII"
        );
        if let Some(parent) = name.wildcard_parent() {
            assert!(parent.matches(name), "{parent} covers {name}");
        }
    }
    let key = id.storage_key();
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)),
        "storage key {key:?} outside [a-z0-9._-]"
    );
    assert!(key != "." && key != ".." && !key.is_empty(), "{key:?}");
    assert_eq!(
        super::identifier_from_storage_key(&key).as_ref(),
        Some(id),
        "storage key {key:?} does not map back to {id:?}"
    );
    let staple = keys::ocsp_staple(id, b"leaf");
    assert_eq!(super::staple_name(&staple), Some(key.as_str()));
    let lock = keys::cert_lock(id);
    match super::lock_file_stem(&lock) {
        Ok(stem) => assert!(!stem.contains(['/', '\\']) && stem != "." && stem != ".."),
        Err(e) => panic!("lock {lock:?} has no file name: {e}"),
    }
    for built in [
        keys::cert_record("issuer", id),
        keys::retry_schedule(id),
        staple,
        keys::challenge_record("dns-01", &key, "token"),
    ] {
        if let Err(e) = validate_key(&built) {
            panic!("key {built:?} built from {id:?} is invalid: {e}");
        }
    }
}

/// Identifier parsing and every storage key built from user input.
pub fn identifier(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = Identifier::parse(text) {
        check_identifier_invariants(&id);
    }
    if let Ok(all) = Identifier::parse_all(text.split(',')) {
        for (i, a) in all.iter().enumerate() {
            assert!(!all[..i].contains(a), "parse_all removes duplicates");
        }
    }
    // Free-form key components: e-mail addresses, CA URLs, challenge types.
    let component = super::safe_key_component(text);
    assert!(component.len() <= 200 && component != "." && component != "..");
    assert!(!component.contains(['/', '\\']));
    let issuer = keys::issuer_key_from_url(text);
    for built in [
        keys::account_record(&issuer, Some(text)),
        keys::account_key(&issuer, Some(text)),
        keys::eab_credentials(text, text),
        keys::challenge_record(text, text, "token"),
    ] {
        if let Err(e) = validate_key(&built) {
            panic!("key {built:?} built from {text:?} is invalid: {e}");
        }
    }
}

/// The `Retry-After` header: never past the one-day cap; delta-seconds are
/// taken as they are.
pub fn retry_after(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(after) = super::retry_after(text, fixed_now()) else {
        return;
    };
    assert!(after <= Duration::from_secs(86_400), "capped at one day");
    if let Ok(secs) = text.trim().parse::<u64>() {
        assert_eq!(after, Duration::from_secs(secs.min(86_400)));
    }
}

/// The `Link` header. Two parts split at the first NUL byte: a free-form
/// header value (every returned relation is a non-empty lower-case token,
/// every URL comes from between `<` and `>`), and a list of links the
/// harness writes as a header (`<url>; rel="rel"; title="title"`, fields
/// separated by NUL bytes), which must read back as exactly those links.
pub fn link_header(data: &[u8]) {
    let (free, structured) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(value) = std::str::from_utf8(free) {
        for (rel, url) in super::link_header(value) {
            assert!(!rel.is_empty(), "empty relation");
            assert!(!rel.chars().any(char::is_whitespace));
            assert_eq!(rel, rel.to_ascii_lowercase());
            assert!(!url.contains('>'), "a URL ends at '>'");
        }
    }
    let Ok(text) = std::str::from_utf8(structured) else {
        return;
    };
    let fields: Vec<&str> = text.split('\0').collect();
    let mut header = Vec::new();
    let mut want = Vec::new();
    for link in fields.chunks(3) {
        let [url, rel, title] = link else { break };
        let url = url.trim();
        let rel_ok = !rel.is_empty()
            && rel
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
        if url.contains(['<', '>']) || !rel_ok || title.contains(['"', '\\']) {
            return;
        }
        header.push(format!("<{url}>; rel=\"{rel}\"; title=\"{title}\""));
        want.push((rel.to_ascii_lowercase(), url.to_owned()));
    }
    let value = header.join(", ");
    assert_eq!(
        super::link_header(&value),
        want,
        "the links of {value:?} read back differently"
    );
}

/// The JSON records CertAuto keeps in storage; the first byte chooses the
/// record type.
pub fn stored_records(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let all = super::StoredRecord::ALL;
    let kind = all[usize::from(kind) % all.len()];
    if let Err(e) = super::stored_record(kind, rest) {
        panic!("{kind:?}: {e}");
    }
}
