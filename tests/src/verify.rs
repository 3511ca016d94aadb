//! A rustls server-certificate verifier for tests and benchmarks that checks
//! the handshake signature but not the chain or the name.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Accepts any server certificate but still verifies the handshake signature
/// (so the client does the same cryptographic work whatever the certificate).
/// For handshakes whose name the certificate cannot match (no SNI, unknown SNI
/// served the default certificate) or one certificate for every name; check
/// the chain separately with [`webpki_verify_chain`](crate::webpki_verify_chain).
#[derive(Debug)]
pub struct SignatureOnly(Arc<CryptoProvider>);

impl SignatureOnly {
    /// With the ring provider's signature algorithms.
    pub fn new() -> Self {
        Self(Arc::new(rustls::crypto::ring::default_provider()))
    }

    /// A ring client config using this verifier, offering `alpn`.
    pub fn client_config(alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Self::new()))
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl Default for SignatureOnly {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
