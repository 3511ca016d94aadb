//! Building OCSP requests and verifying responses (RFC 6960 §4.1, §4.2, §4.2.2.2).

use std::time::SystemTime;

use ring::digest;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{CrlReason, OCSP_CLOCK_SKEW, OCSP_RESPONSE_LIMIT, OcspResponse, OcspStatus};
use crate::der::*;
use crate::error::OcspError;

// ----- request --------------------------------------------------------------

/// The issuer facts a CertID is made of.
struct IssuerInfo<'a> {
    subject: &'a [u8],
    spki: Spki<'a>,
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, OcspError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(OcspError::Certificate(
            "trailing data after the certificate".into(),
        )),
        Err(e) => Err(OcspError::Certificate(e.to_string())),
    }
}

/// The DER `OCSPRequest` for `leaf_der` issued by `issuer_der`: one request,
/// CertID with SHA-1 (what responders universally support, RFC 5019), no
/// nonce and no signature.
pub fn request(leaf_der: &[u8], issuer_der: &[u8]) -> Result<Vec<u8>, OcspError> {
    let leaf = parse_cert(leaf_der)?;
    let issuer = parse_cert(issuer_der)?;
    let spki = Spki::parse(issuer.public_key().raw)?;
    let name_hash = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, leaf.issuer().as_raw());
    let key_hash = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, spki.key);
    let alg = tlv(SEQUENCE, &[tlv(OID, SHA1_OID), tlv(NULL, &[])].concat());
    let cert_id = tlv(
        SEQUENCE,
        &[
            alg,
            tlv(OCTET_STRING, name_hash.as_ref()),
            tlv(OCTET_STRING, key_hash.as_ref()),
            tlv(INTEGER, leaf.raw_serial()),
        ]
        .concat(),
    );
    let request = tlv(SEQUENCE, &cert_id);
    let request_list = tlv(SEQUENCE, &request);
    let tbs = tlv(SEQUENCE, &request_list);
    Ok(tlv(SEQUENCE, &tbs))
}

// ----- response -------------------------------------------------------------

/// Parses and verifies the DER `OCSPResponse` `der` for `leaf_der`, issued by
/// `issuer_der`, at `now`; see the [module docs](crate::ocsp) for what is checked.
/// Any status (good, revoked, unknown) is returned as long as the response
/// verifies.
pub fn verify(
    der: &[u8],
    leaf_der: &[u8],
    issuer_der: &[u8],
    now: SystemTime,
) -> Result<OcspResponse, OcspError> {
    if der.len() > OCSP_RESPONSE_LIMIT {
        return Err(OcspError::Malformed("response larger than the size bound"));
    }
    let basic = parse_response(der)?;
    let leaf = parse_cert(leaf_der)?;
    let issuer_cert = parse_cert(issuer_der)?;
    let issuer = IssuerInfo {
        subject: issuer_cert.subject().as_raw(),
        spki: Spki::parse(issuer_cert.public_key().raw)?,
    };
    if leaf.issuer().as_raw() != issuer.subject {
        return Err(OcspError::Certificate(
            "the issuer certificate did not issue this certificate".into(),
        ));
    }

    // Who signed: the issuer, or a responder the issuer authorised.
    let signer = if responder_is(&basic.responder, issuer.subject, &issuer.spki) {
        issuer.spki
    } else {
        delegated_responder(&basic, &issuer, now)?
    };
    signer.verify(basic.signature_alg, basic.tbs, basic.signature)?;

    // A signed response naming our certificate more than once: a `revoked`
    // entry wins over the others.
    let mut matching = basic.responses.iter().filter(|s| s.matches(&leaf, &issuer));
    let first = matching.next().ok_or(OcspError::NoMatchingResponse)?;
    let single = std::iter::once(first)
        .chain(matching)
        .find(|s| matches!(s.status, OcspStatus::Revoked { .. }))
        .unwrap_or(first);
    if single.this_update > now + OCSP_CLOCK_SKEW {
        return Err(OcspError::NotYetValid {
            this_update: single.this_update,
        });
    }
    let next_update = single.next_update.ok_or(OcspError::NoNextUpdate)?;
    if next_update < single.this_update {
        return Err(OcspError::Malformed("nextUpdate before thisUpdate"));
    }
    if next_update <= now {
        return Err(OcspError::Stale { next_update });
    }
    Ok(OcspResponse {
        der: der.to_vec(),
        status: single.status,
        produced_at: basic.produced_at,
        this_update: single.this_update,
        next_update,
    })
}

/// Whether the ResponderID names this key holder.
fn responder_is(id: &ResponderId<'_>, subject: &[u8], spki: &Spki<'_>) -> bool {
    match id {
        ResponderId::ByName(name) => *name == subject,
        ResponderId::ByKey(hash) => {
            digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, spki.key).as_ref() == *hash
        }
    }
}

/// The key of the delegated responder that signed `basic`: a certificate in
/// the response matching the ResponderID, signed by the issuer, with
/// `id-kp-OCSPSigning`, valid at `now`. The `certs` list is not signed, so
/// every candidate is tried (an injected look-alike cannot hide the real one).
fn delegated_responder<'a>(
    basic: &BasicResponse<'a>,
    issuer: &IssuerInfo<'_>,
    now: SystemTime,
) -> Result<Spki<'a>, OcspError> {
    basic
        .certs
        .iter()
        .find_map(|der| authorised_responder(der, &basic.responder, issuer, now))
        .ok_or(OcspError::UntrustedResponder)
}

/// The key of `der` if it is a responder certificate `issuer` authorised
/// (see [`delegated_responder`]) and `responder` names it.
fn authorised_responder<'a>(
    der: &'a [u8],
    responder: &ResponderId<'_>,
    issuer: &IssuerInfo<'_>,
    now: SystemTime,
) -> Option<Spki<'a>> {
    let cert = parse_cert(der).ok()?;
    let spki = public_key_raw(der).and_then(Spki::parse).ok()?;
    if !responder_is(responder, cert.subject().as_raw(), &spki)
        || cert.issuer().as_raw() != issuer.subject
    {
        return None;
    }
    let sig = &cert.signature_value;
    if sig.unused_bits != 0 {
        return None;
    }
    issuer
        .spki
        .verify(
            cert.signature_algorithm.algorithm.as_bytes(),
            cert.tbs_certificate.as_ref(),
            &sig.data,
        )
        .ok()?;
    if !matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.ocsp_signing) {
        return None;
    }
    let validity = cert.validity();
    let not_before = unix_to_system(validity.not_before.timestamp())?;
    let not_after = unix_to_system(validity.not_after.timestamp())?;
    if now + OCSP_CLOCK_SKEW < not_before || now > not_after {
        return None;
    }
    Some(spki)
}

/// The raw SubjectPublicKeyInfo inside a certificate, borrowed from `der`.
fn public_key_raw(der: &[u8]) -> Result<&[u8], OcspError> {
    const BAD: OcspError = OcspError::Malformed("responder certificate");
    let mut cert = inside(der, SEQUENCE).map_err(|_| BAD)?;
    let mut tbs = Reader::new(cert.expect(SEQUENCE).map_err(|_| BAD)?);
    tbs.optional(CONTEXT_0).map_err(|_| BAD)?; // version
    tbs.expect(INTEGER).map_err(|_| BAD)?; // serial
    tbs.expect(SEQUENCE).map_err(|_| BAD)?; // signature
    tbs.expect(SEQUENCE).map_err(|_| BAD)?; // issuer
    tbs.expect(SEQUENCE).map_err(|_| BAD)?; // validity
    tbs.expect(SEQUENCE).map_err(|_| BAD)?; // subject
    let spki = tbs.next().map_err(|_| BAD)?;
    if spki.tag != SEQUENCE {
        return Err(BAD);
    }
    Ok(spki.raw)
}

enum ResponderId<'a> {
    /// The DER Name.
    ByName(&'a [u8]),
    /// SHA-1 of the responder's public key bits.
    ByKey(&'a [u8]),
}

struct BasicResponse<'a> {
    tbs: &'a [u8],
    responder: ResponderId<'a>,
    produced_at: SystemTime,
    responses: Vec<SingleResponse<'a>>,
    signature_alg: &'a [u8],
    signature: &'a [u8],
    certs: Vec<&'a [u8]>,
}

struct SingleResponse<'a> {
    hash_alg: &'a [u8],
    name_hash: &'a [u8],
    key_hash: &'a [u8],
    serial: &'a [u8],
    status: OcspStatus,
    this_update: SystemTime,
    next_update: Option<SystemTime>,
}

impl SingleResponse<'_> {
    fn matches(&self, leaf: &X509Certificate<'_>, issuer: &IssuerInfo<'_>) -> bool {
        let alg = if self.hash_alg == SHA1_OID {
            &digest::SHA1_FOR_LEGACY_USE_ONLY
        } else if self.hash_alg == SHA256_OID {
            &digest::SHA256
        } else {
            return false;
        };
        serial_value(self.serial) == serial_value(leaf.raw_serial())
            && digest::digest(alg, leaf.issuer().as_raw()).as_ref() == self.name_hash
            && digest::digest(alg, issuer.spki.key).as_ref() == self.key_hash
    }
}

/// An INTEGER's content without redundant leading zero octets (tolerating
/// non-minimal encodings), keeping the zero that marks a positive value with
/// its top bit set: `00 80` (128) and `80` (-128) stay distinct.
fn serial_value(mut b: &[u8]) -> &[u8] {
    while let [0, next, ..] = b
        && next & 0x80 == 0
    {
        b = b.get(1..).unwrap_or(b);
    }
    b
}

/// Parses an `OCSPResponse` (no signature check) and counts its single
/// responses: the fuzz targets' door onto [`parse_response`].
pub(crate) fn parse_response_count(der: &[u8]) -> Result<usize, OcspError> {
    parse_response(der).map(|basic| basic.responses.len())
}

/// Parses an `OCSPResponse` down to its `BasicOCSPResponse` (RFC 6960 §4.2.1).
fn parse_response(der: &[u8]) -> Result<BasicResponse<'_>, OcspError> {
    let mut resp = inside(der, SEQUENCE)?;
    let status = resp.expect(ENUMERATED)?;
    match status {
        [0] => {}
        [code] => return Err(OcspError::Unsuccessful { status: *code }),
        _ => return Err(OcspError::Malformed("responseStatus")),
    }
    let bytes = resp.expect(CONTEXT_0)?;
    resp.end()?;
    let mut bytes = inside(bytes, SEQUENCE)?;
    if bytes.expect(OID)? != OCSP_BASIC_OID {
        return Err(OcspError::UnsupportedResponseType);
    }
    let response = bytes.expect(OCTET_STRING)?;
    bytes.end()?;

    let mut basic = inside(response, SEQUENCE)?;
    let tbs = basic.next()?;
    if tbs.tag != SEQUENCE {
        return Err(OcspError::Malformed("tbsResponseData"));
    }
    let mut alg = Reader::new(basic.expect(SEQUENCE)?);
    let signature_alg = alg.expect(OID)?;
    let signature = bit_string(basic.expect(BIT_STRING)?)?;
    let mut certs = Vec::new();
    if let Some(list) = basic.optional(CONTEXT_0)? {
        let mut list = inside(list, SEQUENCE)?;
        while !list.is_empty() {
            let cert = list.next()?;
            if cert.tag != SEQUENCE {
                return Err(OcspError::Malformed("certs"));
            }
            certs.push(cert.raw);
        }
    }
    basic.end()?;

    let mut data = Reader::new(tbs.content);
    if let Some(version) = data.optional(CONTEXT_0)?
        && sole(version, INTEGER)? != [0]
    {
        return Err(OcspError::Malformed("unsupported ResponseData version"));
    }
    let id = data.next()?;
    let responder = match id.tag {
        CONTEXT_1 => {
            let name = Reader::new(id.content).next()?;
            if name.tag != SEQUENCE || name.raw.len() != id.content.len() {
                return Err(OcspError::Malformed("responderID"));
            }
            ResponderId::ByName(name.raw)
        }
        CONTEXT_2 => ResponderId::ByKey(sole(id.content, OCTET_STRING)?),
        _ => return Err(OcspError::Malformed("responderID")),
    };
    let produced_at = generalized_time(data.expect(GENERALIZED_TIME)?)?;
    let mut list = Reader::new(data.expect(SEQUENCE)?);
    let mut responses = Vec::new();
    while !list.is_empty() {
        responses.push(parse_single(list.expect(SEQUENCE)?)?);
    }
    data.optional(CONTEXT_1)?; // responseExtensions
    data.end()?;
    Ok(BasicResponse {
        tbs: tbs.raw,
        responder,
        produced_at,
        responses,
        signature_alg,
        signature,
        certs,
    })
}

fn parse_single(content: &[u8]) -> Result<SingleResponse<'_>, OcspError> {
    let mut single = Reader::new(content);
    let mut cert_id = Reader::new(single.expect(SEQUENCE)?);
    let mut alg = Reader::new(cert_id.expect(SEQUENCE)?);
    let hash_alg = alg.expect(OID)?;
    let name_hash = cert_id.expect(OCTET_STRING)?;
    let key_hash = cert_id.expect(OCTET_STRING)?;
    let serial = cert_id.expect(INTEGER)?;
    cert_id.end()?;
    let status = single.next()?;
    let status = match status.tag {
        GOOD => OcspStatus::Good,
        REVOKED => {
            let mut info = Reader::new(status.content);
            let time = generalized_time(info.expect(GENERALIZED_TIME)?)?;
            // A reason code we do not know still means revoked: never let it
            // turn a revocation into an error (which keeps an old good staple).
            let reason = match info.optional(CONTEXT_0)? {
                Some(r) => match sole(r, ENUMERATED)? {
                    [code] => CrlReason::from_code(*code),
                    _ => None,
                },
                None => None,
            };
            info.end()?;
            OcspStatus::Revoked { time, reason }
        }
        UNKNOWN => OcspStatus::Unknown,
        _ => return Err(OcspError::Malformed("certStatus")),
    };
    let this_update = generalized_time(single.expect(GENERALIZED_TIME)?)?;
    let next_update = match single.optional(CONTEXT_0)? {
        Some(t) => Some(generalized_time(sole(t, GENERALIZED_TIME)?)?),
        None => None,
    };
    single.optional(CONTEXT_1)?; // singleExtensions
    single.end()?;
    Ok(SingleResponse {
        hash_alg,
        name_hash,
        key_hash,
        serial,
        status,
        this_update,
        next_update,
    })
}

// ----- keys and signatures --------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Other,
}

/// A SubjectPublicKeyInfo: the key's kind and its bits.
#[derive(Clone, Copy)]
struct Spki<'a> {
    kind: KeyKind,
    key: &'a [u8],
}

impl<'a> Spki<'a> {
    fn parse(raw: &'a [u8]) -> Result<Self, OcspError> {
        let mut spki = inside(raw, SEQUENCE)?;
        let mut alg = Reader::new(spki.expect(SEQUENCE)?);
        let oid = alg.expect(OID)?;
        let kind = if oid == RSA_OID {
            KeyKind::Rsa
        } else if oid == EC_OID {
            match alg.optional(OID)? {
                Some(P256_OID) => KeyKind::P256,
                Some(P384_OID) => KeyKind::P384,
                _ => KeyKind::Other,
            }
        } else {
            KeyKind::Other
        };
        let key = bit_string(spki.expect(BIT_STRING)?)?;
        spki.end()?;
        Ok(Self { kind, key })
    }

    /// Verifies `signature` over `message` made with the algorithm `alg` (an OID's content).
    fn verify(&self, alg: &[u8], message: &[u8], signature: &[u8]) -> Result<(), OcspError> {
        let algorithm: &'static dyn VerificationAlgorithm = match (self.kind, alg) {
            (KeyKind::Rsa, RSA_SHA256_OID) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (KeyKind::Rsa, RSA_SHA384_OID) => &signature::RSA_PKCS1_2048_8192_SHA384,
            (KeyKind::Rsa, RSA_SHA512_OID) => &signature::RSA_PKCS1_2048_8192_SHA512,
            (KeyKind::P256, ECDSA_SHA256_OID) => &signature::ECDSA_P256_SHA256_ASN1,
            (KeyKind::P256, ECDSA_SHA384_OID) => &signature::ECDSA_P256_SHA384_ASN1,
            (KeyKind::P384, ECDSA_SHA256_OID) => &signature::ECDSA_P384_SHA256_ASN1,
            (KeyKind::P384, ECDSA_SHA384_OID) => &signature::ECDSA_P384_SHA384_ASN1,
            // A supported algorithm that does not fit the key: not made with this key.
            (KeyKind::Rsa | KeyKind::P256 | KeyKind::P384, _)
                if [
                    RSA_SHA256_OID,
                    RSA_SHA384_OID,
                    RSA_SHA512_OID,
                    ECDSA_SHA256_OID,
                    ECDSA_SHA384_OID,
                ]
                .contains(&alg) =>
            {
                return Err(OcspError::BadSignature);
            }
            _ => return Err(OcspError::UnsupportedAlgorithm),
        };
        UnparsedPublicKey::new(algorithm, self.key)
            .verify(message, signature)
            .map_err(|_| OcspError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Duration;

    // ----- a PKI and `openssl ocsp` as the responder -----

    fn openssl() -> PathBuf {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join("openssl"))
            .find(|p| p.is_file())
            .expect("`openssl` not found on PATH: install the Debian package `openssl`")
    }

    fn run(dir: &Path, args: &[&str]) {
        let out = Command::new(openssl())
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pem_to_der(path: &Path) -> Vec<u8> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        CertificateDer::from_pem_file(path).unwrap().to_vec()
    }

    /// Key arguments for `openssl req -newkey`.
    const RSA: &[&str] = &["-newkey", "rsa:2048"];
    const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    const P384: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"];

    /// A CA, leaves and responders made with the `openssl` CLI in a temp dir.
    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new(ca_key: &[&str]) -> Self {
            let pki = Self {
                dir: tempfile::tempdir().unwrap(),
            };
            pki.self_signed("ca", "/CN=Test Issuing CA", ca_key);
            std::fs::write(pki.path("index.txt.attr"), "unique_subject = no\n").unwrap();
            pki.set_index(&[]);
            pki
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn der(&self, name: &str) -> Vec<u8> {
            pem_to_der(&self.path(&format!("{name}.pem")))
        }

        fn self_signed(&self, name: &str, subject: &str, key: &[&str]) {
            let (pem, key_file) = (format!("{name}.pem"), format!("{name}.key"));
            let mut args = vec!["req", "-x509", "-nodes", "-days", "3", "-subj", subject];
            args.extend_from_slice(key);
            args.extend_from_slice(&["-keyout", &key_file, "-out", &pem]);
            run(self.dir.path(), &args);
        }

        /// A certificate `name` signed by `ca`, with extensions `ext` (openssl config lines).
        fn issue(&self, name: &str, ca: &str, serial: &str, ext: &str) {
            let dir = self.dir.path();
            let (csr, key, pem, ext_file) = (
                format!("{name}.csr"),
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            let subject = format!("/CN={name}");
            let mut args = vec!["req", "-new", "-nodes", "-subj", &subject];
            args.extend_from_slice(P256);
            args.extend_from_slice(&["-keyout", &key, "-out", &csr]);
            run(dir, &args);
            std::fs::write(dir.join(&ext_file), format!("{ext}\n")).unwrap();
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            run(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_pem,
                    "-CAkey",
                    &ca_key,
                    "-set_serial",
                    serial,
                    "-days",
                    "2",
                    "-extfile",
                    &ext_file,
                    "-out",
                    &pem,
                ],
            );
        }

        /// `rows`: (uppercase hex serial, revoked?).
        fn set_index(&self, rows: &[(&str, bool)]) {
            let mut index = String::new();
            for (serial, revoked) in rows {
                if *revoked {
                    index.push_str(&format!(
                        "R\t491231235959Z\t240101000000Z,keyCompromise\t{serial}\tunknown\t/CN={serial}\n"
                    ));
                } else {
                    index.push_str(&format!(
                        "V\t491231235959Z\t\t{serial}\tunknown\t/CN={serial}\n"
                    ));
                }
            }
            std::fs::write(self.path("index.txt"), index).unwrap();
        }

        /// `openssl ocsp` answering `request` as signer `signer` (for CA `ca`), with `extra` options.
        fn respond(&self, request: &[u8], signer: &str, extra: &[&str]) -> Vec<u8> {
            std::fs::write(self.path("req.der"), request).unwrap();
            let (rsigner, rkey) = (format!("{signer}.pem"), format!("{signer}.key"));
            let mut args = vec![
                "ocsp",
                "-index",
                "index.txt",
                "-CA",
                "ca.pem",
                "-rsigner",
                &rsigner,
                "-rkey",
                &rkey,
                "-reqin",
                "req.der",
                "-respout",
                "resp.der",
            ];
            args.extend_from_slice(extra);
            run(self.dir.path(), &args);
            std::fs::read(self.path("resp.der")).unwrap()
        }

        /// A leaf `leaf` (serial 0x0A1B2C3D4E5F), and the response to its request.
        fn standard(&self, signer: &str, extra: &[&str]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
            self.issue("leaf", "ca", "0x0A1B2C3D4E5F", "basicConstraints=CA:FALSE");
            let (leaf, ca) = (self.der("leaf"), self.der("ca"));
            let resp = self.respond(&request(&leaf, &ca).unwrap(), signer, extra);
            (leaf, ca, resp)
        }
    }

    const NMIN_60: &[&str] = &["-nmin", "60"];

    fn good(resp: &OcspResponse) {
        assert_eq!(resp.status(), OcspStatus::Good, "{resp:?}");
    }

    #[test]
    fn good_response_from_openssl_for_every_key_type() {
        for key in [RSA, P256, P384] {
            let pki = Pki::new(key);
            pki.set_index(&[("0A1B2C3D4E5F", false)]);
            let (leaf, ca, resp) = pki.standard("ca", NMIN_60);
            let now = SystemTime::now();
            let verified = verify(&resp, &leaf, &ca, now).unwrap();
            good(&verified);
            assert_eq!(verified.der(), &resp[..]);
            let validity = verified
                .next_update()
                .duration_since(verified.this_update())
                .unwrap();
            assert_eq!(validity, Duration::from_secs(3600));
            assert_eq!(
                verified.refresh_at(),
                verified.this_update() + Duration::from_secs(1800)
            );
        }
    }

    #[test]
    fn request_matches_what_openssl_builds() {
        let pki = Pki::new(P256);
        pki.issue("leaf", "ca", "0x00FF", "basicConstraints=CA:FALSE");
        run(
            pki.dir.path(),
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-cert",
                "leaf.pem",
                "-no_nonce",
                "-reqout",
                "openssl-req.der",
            ],
        );
        let theirs = std::fs::read(pki.path("openssl-req.der")).unwrap();
        let ours = request(&pki.der("leaf"), &pki.der("ca")).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn revoked_and_unknown_statuses() {
        let pki = Pki::new(RSA);
        pki.set_index(&[("0A1B2C3D4E5F", true)]);
        let (leaf, ca, resp) = pki.standard("ca", NMIN_60);
        let verified = verify(&resp, &leaf, &ca, SystemTime::now()).unwrap();
        let OcspStatus::Revoked { time, reason } = verified.status() else {
            panic!("{verified:?}")
        };
        assert_eq!(reason, Some(CrlReason::KeyCompromise));
        assert_eq!(time, generalized_time(b"20240101000000Z").unwrap());

        pki.set_index(&[]);
        let resp = pki.respond(&request(&leaf, &ca).unwrap(), "ca", NMIN_60);
        let verified = verify(&resp, &leaf, &ca, SystemTime::now()).unwrap();
        assert_eq!(verified.status(), OcspStatus::Unknown);
    }

    #[test]
    fn responder_by_key_and_sha256_cert_ids() {
        let pki = Pki::new(P256);
        pki.set_index(&[("0A1B2C3D4E5F", false)]);
        let (leaf, ca, resp) = pki.standard("ca", &["-nmin", "60", "-resp_key_id"]);
        good(&verify(&resp, &leaf, &ca, SystemTime::now()).unwrap());

        // A request with SHA-256 CertID hashes gets a response in kind.
        run(
            pki.dir.path(),
            &[
                "ocsp",
                "-issuer",
                "ca.pem",
                "-sha256",
                "-cert",
                "leaf.pem",
                "-no_nonce",
                "-reqout",
                "req256.der",
            ],
        );
        let req = std::fs::read(pki.path("req256.der")).unwrap();
        let resp = pki.respond(&req, "ca", NMIN_60);
        good(&verify(&resp, &leaf, &ca, SystemTime::now()).unwrap());
    }

    #[test]
    fn delegated_responders() {
        let pki = Pki::new(RSA);
        pki.set_index(&[("0A1B2C3D4E5F", false)]);
        pki.issue("delegate", "ca", "0x02", "extendedKeyUsage=OCSPSigning");
        pki.issue("no-eku", "ca", "0x03", "extendedKeyUsage=serverAuth");
        pki.self_signed("other-ca", "/CN=Other CA", P256);
        pki.issue(
            "foreign",
            "other-ca",
            "0x04",
            "extendedKeyUsage=OCSPSigning",
        );
        let (leaf, ca, resp) = pki.standard("delegate", NMIN_60);
        let now = SystemTime::now();
        good(&verify(&resp, &leaf, &ca, now).unwrap());
        // A delegate is trusted only while its certificate is valid.
        let err = verify(&resp, &leaf, &ca, now + Duration::from_secs(50 * 3600));
        assert!(matches!(
            err,
            Err(OcspError::Stale { .. }) | Err(OcspError::UntrustedResponder)
        ));

        let req = request(&leaf, &ca).unwrap();
        let resp = pki.respond(&req, "no-eku", NMIN_60);
        let err = verify(&resp, &leaf, &ca, now).unwrap_err();
        assert!(matches!(err, OcspError::UntrustedResponder), "{err:?}");

        let resp = pki.respond(&req, "foreign", NMIN_60);
        let err = verify(&resp, &leaf, &ca, now).unwrap_err();
        assert!(matches!(err, OcspError::UntrustedResponder), "{err:?}");

        // Without its certificate in the response, a delegate cannot be trusted.
        let resp = pki.respond(&req, "delegate", &["-nmin", "60", "-resp_no_certs"]);
        let err = verify(&resp, &leaf, &ca, now).unwrap_err();
        assert!(matches!(err, OcspError::UntrustedResponder), "{err:?}");
    }

    /// `resp` with its (unsigned) `certs` list replaced by `certs`.
    fn with_certs(resp: &[u8], certs: &[&[u8]]) -> Vec<u8> {
        let mut r = inside(resp, SEQUENCE).unwrap();
        let status = r.next().unwrap().raw;
        let mut bytes = inside(r.expect(CONTEXT_0).unwrap(), SEQUENCE).unwrap();
        let oid = bytes.next().unwrap().raw;
        let mut basic = inside(bytes.expect(OCTET_STRING).unwrap(), SEQUENCE).unwrap();
        let (tbs, alg, sig) = (
            basic.next().unwrap().raw,
            basic.next().unwrap().raw,
            basic.next().unwrap().raw,
        );
        let list = tlv(CONTEXT_0, &tlv(SEQUENCE, &certs.concat()));
        let basic = tlv(SEQUENCE, &[tbs, alg, sig, &list].concat());
        let bytes = tlv(SEQUENCE, &[oid, &tlv(OCTET_STRING, &basic)].concat());
        tlv(SEQUENCE, &[status, &tlv(CONTEXT_0, &bytes)].concat())
    }

    #[test]
    fn injected_look_alike_responder_does_not_hide_the_real_one() {
        let pki = Pki::new(RSA);
        pki.set_index(&[("0A1B2C3D4E5F", false)]);
        pki.issue("delegate", "ca", "0x02", "extendedKeyUsage=OCSPSigning");
        pki.self_signed("look-alike", "/CN=delegate", P256);
        let (leaf, ca, resp) = pki.standard("delegate", NMIN_60);
        let (fake, real) = (pki.der("look-alike"), pki.der("delegate"));
        let now = SystemTime::now();
        good(&verify(&with_certs(&resp, &[&fake, &real]), &leaf, &ca, now).unwrap());
        let err = verify(&with_certs(&resp, &[&fake]), &leaf, &ca, now).unwrap_err();
        assert!(matches!(err, OcspError::UntrustedResponder), "{err:?}");
    }

    #[test]
    fn serials_compare_by_value_and_sign() {
        assert_eq!(serial_value(&[0, 0, 1]), serial_value(&[1]));
        assert_eq!(serial_value(&[0, 0, 0x80]), serial_value(&[0, 0x80]));
        assert_ne!(serial_value(&[0, 0x80]), serial_value(&[0x80]));
        assert_eq!(serial_value(&[0]), &[0]);
        assert_eq!(serial_value(&[]), &[] as &[u8]);
    }

    #[test]
    fn revoked_with_an_unknown_reason_is_still_revoked() {
        let cert_id = tlv(
            SEQUENCE,
            &[
                tlv(SEQUENCE, &[tlv(OID, SHA1_OID), tlv(NULL, &[])].concat()),
                tlv(OCTET_STRING, &[1; 20]),
                tlv(OCTET_STRING, &[2; 20]),
                tlv(INTEGER, &[5]),
            ]
            .concat(),
        );
        for reason in [&[7u8][..], &[42], &[0, 1]] {
            let revoked = tlv(
                REVOKED,
                &[
                    tlv(GENERALIZED_TIME, b"20240101000000Z"),
                    tlv(CONTEXT_0, &tlv(ENUMERATED, reason)),
                ]
                .concat(),
            );
            let single = [
                cert_id.clone(),
                revoked,
                tlv(GENERALIZED_TIME, b"20240102000000Z"),
            ]
            .concat();
            let parsed = parse_single(&single).unwrap();
            assert!(
                matches!(parsed.status, OcspStatus::Revoked { reason: None, .. }),
                "{:?}",
                parsed.status
            );
        }
    }

    #[test]
    fn forged_response_is_rejected() {
        let pki = Pki::new(RSA);
        pki.set_index(&[("0A1B2C3D4E5F", false)]);
        // Same name as the issuer, another key (of the same type, then of another).
        pki.self_signed("forger", "/CN=Test Issuing CA", RSA);
        pki.self_signed("ec-forger", "/CN=Test Issuing CA", P256);
        let (leaf, ca, resp) = pki.standard("forger", NMIN_60);
        let err = verify(&resp, &leaf, &ca, SystemTime::now()).unwrap_err();
        assert!(matches!(err, OcspError::BadSignature), "{err:?}");
        let err = verify(
            &pki.respond(
                &request(&leaf, &ca).unwrap(),
                "forger",
                &["-nmin", "60", "-resp_key_id"],
            ),
            &leaf,
            &ca,
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(matches!(err, OcspError::UntrustedResponder), "{err:?}");
        let resp = pki.respond(&request(&leaf, &ca).unwrap(), "ec-forger", NMIN_60);
        let err = verify(&resp, &leaf, &ca, SystemTime::now()).unwrap_err();
        assert!(matches!(err, OcspError::BadSignature), "{err:?}");
    }

    #[test]
    fn stale_future_and_endless_responses_are_rejected() {
        let pki = Pki::new(P256);
        pki.set_index(&[("0A1B2C3D4E5F", false)]);
        let (leaf, ca, resp) = pki.standard("ca", &["-nmin", "10"]);
        let now = SystemTime::now();
        let v = verify(&resp, &leaf, &ca, now).unwrap();
        let err = verify(&resp, &leaf, &ca, v.next_update()).unwrap_err();
        assert!(matches!(err, OcspError::Stale { .. }), "{err:?}");
        // Within the skew allowance, a response from the near future is fine.
        verify(&resp, &leaf, &ca, v.this_update() - Duration::from_secs(60)).unwrap();
        let err = verify(
            &resp,
            &leaf,
            &ca,
            v.this_update() - Duration::from_secs(3600),
        )
        .unwrap_err();
        assert!(matches!(err, OcspError::NotYetValid { .. }), "{err:?}");

        let resp = pki.respond(&request(&leaf, &ca).unwrap(), "ca", &[]);
        let err = verify(&resp, &leaf, &ca, now).unwrap_err();
        assert!(matches!(err, OcspError::NoNextUpdate), "{err:?}");
    }

    #[test]
    fn response_for_another_certificate_is_rejected() {
        let pki = Pki::new(P256);
        pki.set_index(&[("0A1B2C3D4E5F", false), ("0B", false)]);
        let (_, ca, resp) = pki.standard("ca", NMIN_60);
        pki.issue("other", "ca", "0x0B", "basicConstraints=CA:FALSE");
        let err = verify(&resp, &pki.der("other"), &ca, SystemTime::now()).unwrap_err();
        assert!(matches!(err, OcspError::NoMatchingResponse), "{err:?}");
        // The issuer must be the leaf's.
        pki.self_signed("unrelated", "/CN=Unrelated", P256);
        let err = verify(
            &resp,
            &pki.der("leaf"),
            &pki.der("unrelated"),
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(matches!(err, OcspError::Certificate(_)), "{err:?}");
    }

    #[test]
    fn malformed_responses_never_panic() {
        let pki = Pki::new(RSA);
        pki.set_index(&[("0A1B2C3D4E5F", false)]);
        let (leaf, ca, resp) = pki.standard("ca", NMIN_60);
        let now = SystemTime::now();
        good(&verify(&resp, &leaf, &ca, now).unwrap());
        // Every truncation.
        for len in 0..resp.len() {
            assert!(
                verify(&resp[..len], &leaf, &ca, now).is_err(),
                "truncated at {len}"
            );
        }
        // Trailing data.
        let mut longer = resp.clone();
        longer.push(0);
        assert!(verify(&longer, &leaf, &ca, now).is_err());
        // Every single-byte corruption: an error or (in unsigned parts such as
        // the certs list) still the same verified answer, never a panic.
        for i in 0..resp.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = resp.clone();
                bad[i] ^= flip;
                if let Ok(v) = verify(&bad, &leaf, &ca, now) {
                    good(&v);
                }
            }
        }
        // A flipped bit in the signed data is a bad signature.
        let basic = parse_response(&resp).unwrap();
        let offset = basic.tbs.as_ptr() as usize - resp.as_ptr() as usize;
        let mut bad = resp.clone();
        let produced = offset + basic.tbs.len() - 3;
        bad[produced] ^= 0x01;
        let err = verify(&bad, &leaf, &ca, now).unwrap_err();
        assert!(
            matches!(err, OcspError::BadSignature | OcspError::Malformed(_)),
            "{err:?}"
        );
        // Garbage, and certificates that are not.
        for junk in [&b""[..], b"\x30\x00", b"hello", &[0xff; 100]] {
            assert!(verify(junk, &leaf, &ca, now).is_err());
            assert!(verify(&resp, junk, &ca, now).is_err());
            assert!(verify(&resp, &leaf, junk, now).is_err());
            assert!(request(junk, &ca).is_err());
        }
        assert!(verify(&vec![0x30; OCSP_RESPONSE_LIMIT + 1], &leaf, &ca, now).is_err());
    }
}
