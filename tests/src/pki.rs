//! The throw-away PKI that Pebble's own HTTPS endpoints (ACME and management) are served
//! with: a fresh CA and a `localhost` / `127.0.0.1` leaf certificate per harness.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// PEM/DER material for Pebble's HTTPS listener.
#[derive(Debug, Clone)]
pub(crate) struct HttpsPki {
    /// CA certificate (PEM) that clients must trust.
    pub(crate) ca_pem: String,
    /// CA certificate (DER).
    pub(crate) ca_der: Vec<u8>,
    /// Leaf certificate for `localhost` and `127.0.0.1` (PEM).
    pub(crate) leaf_cert_pem: String,
    /// PKCS#8 private key of the leaf (PEM).
    pub(crate) leaf_key_pem: String,
}

/// Generates a new CA and a leaf for `localhost` + `127.0.0.1` signed by it (ECDSA P-256).
pub(crate) fn generate() -> HttpsPki {
    let ca_key = KeyPair::generate().expect("generate P-256 key for the test HTTPS CA");
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).expect("empty SAN list is valid");
    let mut ca_dn = DistinguishedName::new();
    ca_dn.push(DnType::CommonName, "certauto-tests Pebble HTTPS CA");
    ca_params.distinguished_name = ca_dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-sign the test HTTPS CA");

    let leaf_key = KeyPair::generate().expect("generate P-256 key for Pebble's HTTPS leaf");
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("localhost / 127.0.0.1 are valid SANs");
    let mut leaf_dn = DistinguishedName::new();
    leaf_dn.push(DnType::CommonName, "localhost");
    leaf_params.distinguished_name = leaf_dn;
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf = leaf_params
        .signed_by(&leaf_key, &*ca)
        .expect("sign Pebble's HTTPS leaf with the test CA");

    HttpsPki {
        ca_pem: ca.pem(),
        ca_der: ca.der().to_vec(),
        leaf_cert_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}
