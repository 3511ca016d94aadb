//! Choosing among the certificate chains a CA offers (RFC 8555 §7.4.2 alternates).

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use x509_parser::prelude::*;

/// Which chain to keep when the CA offers alternates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ChainPreference {
    /// The CA's default chain.
    #[default]
    Default,
    /// The first chain whose root (the issuer of its topmost certificate) has this Common Name.
    RootCommonName(String),
    /// The first chain any of whose issuers has this Common Name.
    IssuerCommonName(String),
    /// The chain with the fewest certificates.
    Shortest,
}

/// A PEM certificate chain as downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemChain {
    /// The URL it was downloaded from.
    pub url: String,
    /// The PEM text: leaf first.
    pub pem: String,
}

impl PemChain {
    fn ders(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.pem.as_bytes())
            .filter_map(Result::ok)
            .collect()
    }

    /// The issuer CNs of every certificate in the chain, leaf first.
    pub fn issuer_common_names(&self) -> Vec<String> {
        self.ders()
            .iter()
            .filter_map(|der| {
                let (_, cert) = X509Certificate::from_der(der).ok()?;
                cert.issuer()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The number of certificates.
    pub fn len(&self) -> usize {
        self.ders().len()
    }

    /// Whether the chain holds no certificate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Picks a chain according to `pref`; the default (first) chain when nothing matches.
pub fn select_chain<'a>(chains: &'a [PemChain], pref: &ChainPreference) -> Option<&'a PemChain> {
    let chosen = match pref {
        ChainPreference::Default => None,
        ChainPreference::RootCommonName(cn) => chains
            .iter()
            .find(|c| c.issuer_common_names().last() == Some(cn)),
        ChainPreference::IssuerCommonName(cn) => chains
            .iter()
            .find(|c| c.issuer_common_names().iter().any(|i| i == cn)),
        ChainPreference::Shortest => chains
            .iter()
            .filter(|c| !c.is_empty())
            .min_by_key(|c| c.len()),
    };
    chosen.or_else(|| chains.first())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ca(cn: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.clone().self_signed(&key).unwrap();
        (cert, rcgen::Issuer::new(params, key))
    }

    fn chain_under(root_cn: &str, extra_intermediates: usize) -> PemChain {
        let (_root, mut issuer) = ca(root_cn);
        let mut pems = Vec::new();
        for i in 0..=extra_intermediates {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("{root_cn} int {i}"));
            let cert = params.clone().signed_by(&key, &issuer).unwrap();
            pems.push(cert.pem());
            issuer = rcgen::Issuer::new(params, key);
        }
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        pems.push(leaf.pem());
        pems.reverse();
        PemChain {
            url: root_cn.to_owned(),
            pem: pems.concat(),
        }
    }

    #[test]
    fn selects_by_root_issuer_and_length() {
        let chains = vec![
            chain_under("Root A", 1),
            chain_under("Root B", 0),
            chain_under("Root C", 2),
        ];
        assert_eq!(chains[0].len(), 3);
        let pick = |p| select_chain(&chains, &p).unwrap().url.clone();
        assert_eq!(pick(ChainPreference::Default), "Root A");
        assert_eq!(
            pick(ChainPreference::RootCommonName("Root C".into())),
            "Root C"
        );
        assert_eq!(
            pick(ChainPreference::IssuerCommonName("Root B int 0".into())),
            "Root B"
        );
        assert_eq!(pick(ChainPreference::Shortest), "Root B");
        assert_eq!(
            pick(ChainPreference::RootCommonName("nope".into())),
            "Root A"
        );
        assert!(select_chain(&[], &ChainPreference::Shortest).is_none());
    }
}
