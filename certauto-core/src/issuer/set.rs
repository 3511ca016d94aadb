//! The issuer set: which issuers a certificate's names go to, in which
//! order, and when to fail over to the next one.

use std::sync::Arc;

use super::{Issuer, LOCAL_CA_ISSUER_KEY, LocalCa, is_internal_name, is_local_name};
use crate::error::{ConfigError, Error};
use crate::identifier::Identifier;
use crate::storage::StorageError;

/// The configured issuers, in order, and the local CA.
///
/// # Routing
/// - With issuers configured by the user: names no public CA can issue
///   ([`is_internal_name`]) go to the local CA (unless
///   `public_ca_for_local_names` is set), every other certificate to the
///   configured issuers, in order.
/// - With none: local names ([`is_local_name`], `.test` included) go to the
///   local CA, every other certificate to the default issuer (Let's Encrypt).
///
/// # Failover
/// An order is tried with each usable issuer in turn (one whose
/// [`precheck`](Issuer::precheck) accepts the names) until one issues.
/// Every error from [`Issuer::issue`] moves on to the next issuer, except a
/// lost storage lock, which ends the attempt (another instance may be
/// ordering the same name).
#[derive(Debug)]
pub(crate) struct IssuerSet {
    issuers: Vec<Arc<dyn Issuer>>,
    configured: bool,
    local_ca: Arc<LocalCa>,
    local_names_use_local_ca: bool,
}

impl IssuerSet {
    /// `issuers` in order; `configured` says whether the user chose them (or
    /// they are the default); `local_names_use_local_ca` is the routing switch.
    pub(crate) fn new(
        issuers: Vec<Arc<dyn Issuer>>,
        configured: bool,
        local_ca: Arc<LocalCa>,
        local_names_use_local_ca: bool,
    ) -> Self {
        Self {
            issuers,
            configured,
            local_ca,
            local_names_use_local_ca,
        }
    }

    /// The issuers, in order (the local CA not included).
    pub(crate) fn issuers(&self) -> &[Arc<dyn Issuer>] {
        &self.issuers
    }

    /// The local CA.
    pub(crate) fn local_ca(&self) -> &Arc<LocalCa> {
        &self.local_ca
    }

    /// The issuers the certificate for `ids` goes to, in order (see [Routing](Self#routing)).
    pub(crate) fn candidates(&self, ids: &[Identifier]) -> Vec<Arc<dyn Issuer>> {
        let local = if self.configured {
            self.local_names_use_local_ca && ids.iter().all(is_internal_name)
        } else {
            ids.iter().all(is_local_name)
        };
        if self.issuers.is_empty() || local {
            vec![self.local_ca.clone() as Arc<dyn Issuer>]
        } else {
            self.issuers.clone()
        }
    }

    /// The candidates whose precheck accepts `ids`; the first precheck error
    /// when none does.
    pub(crate) fn usable(&self, ids: &[Identifier]) -> Result<Vec<Arc<dyn Issuer>>, Error> {
        let candidates = self.candidates(ids);
        if candidates.is_empty() {
            return Err(ConfigError::NoIssuers.into());
        }
        let mut first_err = None;
        let mut usable = Vec::new();
        for issuer in &candidates {
            match issuer.precheck(ids) {
                Ok(()) => usable.push(issuer.clone()),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match (usable.is_empty(), first_err) {
            (true, Some(e)) => Err(e),
            _ => Ok(usable),
        }
    }

    /// The issuer a stored certificate came from, by issuer key.
    pub(crate) fn by_key(&self, issuer_key: &str) -> Option<Arc<dyn Issuer>> {
        if issuer_key == LOCAL_CA_ISSUER_KEY {
            return Some(self.local_ca.clone());
        }
        self.issuers
            .iter()
            .find(|i| i.issuer_key() == issuer_key)
            .cloned()
    }

    /// Whether, after `error` from one issuer, the next one is tried (see [Failover](Self#failover)).
    pub(crate) fn fails_over(error: &Error) -> bool {
        !matches!(error, Error::Storage(StorageError::LockLost(_)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::MemoryStorage;

    fn ids(names: &[&str]) -> Vec<Identifier> {
        names
            .iter()
            .map(|n| Identifier::parse(n).unwrap())
            .collect()
    }

    #[derive(Debug)]
    struct Named(&'static str);

    #[async_trait::async_trait]
    impl Issuer for Named {
        fn issuer_key(&self) -> String {
            self.0.to_owned()
        }
        async fn issue(
            &self,
            _: &super::super::IssueRequest<'_>,
        ) -> Result<super::super::IssuedCertificate, Error> {
            Err(ConfigError::NoIssuers.into())
        }
        async fn revoke(
            &self,
            _: &crate::Certificate,
            _: Option<crate::acme::types::RevocationReason>,
        ) -> Result<(), Error> {
            Ok(())
        }
    }

    fn set(configured: bool, local_names_use_local_ca: bool) -> IssuerSet {
        let local = Arc::new(LocalCa::new(Arc::new(MemoryStorage::new())));
        IssuerSet::new(
            vec![Arc::new(Named("ca"))],
            configured,
            local,
            local_names_use_local_ca,
        )
    }

    fn first(set: &IssuerSet, names: &[&str]) -> String {
        set.candidates(&ids(names))[0].issuer_key()
    }

    #[test]
    fn routing_follows_the_documented_rules() {
        // The default issuer: .test and internal names are local.
        let default = set(false, true);
        for local in [
            "localhost",
            "a.test",
            "a.internal",
            "a.local",
            "a.home.arpa",
            "10.0.0.1",
            "::1",
        ] {
            assert_eq!(first(&default, &[local]), LOCAL_CA_ISSUER_KEY, "{local}");
        }
        assert_eq!(first(&default, &["example.com"]), "ca");
        assert_eq!(first(&default, &["a.test", "example.com"]), "ca");
        // A configured issuer: .test goes to it, internal names stay local.
        let configured = set(true, true);
        assert_eq!(first(&configured, &["a.test"]), "ca");
        assert_eq!(first(&configured, &["a.internal"]), LOCAL_CA_ISSUER_KEY);
        assert_eq!(first(&configured, &["8.8.8.8"]), "ca");
        // Unless local names are sent to the issuer too.
        assert_eq!(first(&set(true, false), &["localhost"]), "ca");
        assert!(set(true, true).by_key(LOCAL_CA_ISSUER_KEY).is_some());
        assert!(set(true, true).by_key("ca").is_some());
        assert!(set(true, true).by_key("other").is_none());
    }

    #[test]
    fn a_lost_lock_ends_failover() {
        assert!(IssuerSet::fails_over(&ConfigError::NoIssuers.into()));
        assert!(!IssuerSet::fails_over(
            &StorageError::LockLost("cert_x".into()).into()
        ));
    }
}
