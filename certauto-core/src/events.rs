//! Certificate lifecycle events.
//!
//! ```
//! use certauto_core::{Config, Event};
//!
//! let config = Config::builder()
//!     .on_event(|event: &Event| println!("{}: {:?}", event.name(), event.names()))
//!     .build();
//! # let _ = config;
//! ```

use std::sync::Arc;
use std::time::SystemTime;

use crate::acme::types::RevocationReason;
use crate::handshake::OnDemandRefusal;
use crate::ocsp::CrlReason;

/// Something that happened to a managed certificate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// An obtain or renewal is starting (`cert_obtaining`).
    CertObtaining {
        /// The names.
        names: Vec<String>,
        /// Whether this is a renewal.
        renewal: bool,
    },
    /// A certificate was obtained, by a first obtain or a renewal (`cert_obtained`).
    CertObtained {
        /// The names.
        names: Vec<String>,
        /// Whether this was a renewal.
        renewal: bool,
        /// The issuer that issued it.
        issuer: String,
        /// Serial number (hex).
        serial: String,
        /// End of validity.
        not_after: SystemTime,
    },
    /// A certificate was renewed (`cert_renewed`), emitted after `CertObtained`.
    CertRenewed {
        /// The names.
        names: Vec<String>,
        /// The issuer that issued it.
        issuer: String,
        /// Serial number (hex).
        serial: String,
        /// End of validity.
        not_after: SystemTime,
    },
    /// An obtain or renewal failed (`cert_failed`).
    CertFailed {
        /// The names.
        names: Vec<String>,
        /// Whether this was a renewal.
        renewal: bool,
        /// The error with its whole cause chain, as text ([`ErrorChain`](crate::ErrorChain)).
        error: String,
        /// The CA's problem document, when the CA refused.
        problem: Option<Box<crate::Problem>>,
        /// Which attempt this was (1 for the first).
        attempt: u32,
        /// When the next attempt is scheduled, if any.
        retry_at: Option<SystemTime>,
    },
    /// A certificate was revoked (`cert_revoked`).
    CertRevoked {
        /// The names.
        names: Vec<String>,
        /// The issuer.
        issuer: String,
        /// Serial number (hex).
        serial: String,
        /// The reason given.
        reason: Option<RevocationReason>,
    },
    /// A managed certificate was loaded from storage into the cache (`cached_managed_cert`).
    CachedManagedCert {
        /// The names.
        names: Vec<String>,
        /// Serial number (hex).
        serial: String,
    },
    /// A verified `good` OCSP response was stapled to a certificate, fetched
    /// or loaded from storage (`cert_ocsp_stapled`).
    CertOcspStapled {
        /// The names.
        names: Vec<String>,
        /// Serial number (hex).
        serial: String,
        /// The response's `thisUpdate`.
        this_update: SystemTime,
        /// The response's `nextUpdate`, when it goes stale.
        next_update: SystemTime,
    },
    /// The CA's OCSP responder reports a certificate revoked (`cert_ocsp_revoked`);
    /// its staple is removed and, for a managed certificate, a renewal starts at once.
    CertOcspRevoked {
        /// The names.
        names: Vec<String>,
        /// Serial number (hex).
        serial: String,
        /// When it was revoked.
        revoked_at: SystemTime,
        /// The reason, if the responder gave one.
        reason: Option<CrlReason>,
    },
    /// The on-demand gate allowed a name (`on_demand_allowed`); its
    /// certificate is loaded from storage or obtained next.
    OnDemandAllowed {
        /// The name (the SNI, normalised).
        name: String,
    },
    /// The on-demand gate refused a name (`on_demand_refused`), or a
    /// refusal was remembered ([`OnDemandRefusal::Cached`]).
    OnDemandRefused {
        /// The name (the SNI as sent when it is invalid).
        name: String,
        /// Why.
        reason: OnDemandRefusal,
    },
    /// An allowed name was not issued now (`on_demand_rate_limited`): the
    /// on-demand rate limit or the bound on issuances in flight. Not
    /// remembered: a later handshake tries again.
    OnDemandRateLimited {
        /// The name.
        name: String,
    },
    /// The certificate of an allowed name is in the cache
    /// (`on_demand_obtained`), from storage or newly obtained.
    OnDemandObtained {
        /// The name.
        name: String,
        /// Serial number (hex).
        serial: String,
    },
    /// The on-demand issuance of an allowed name failed (`on_demand_failed`).
    OnDemandFailed {
        /// The name.
        name: String,
        /// The error with its whole cause chain, as text.
        error: String,
    },
    /// A certificate obtained on demand is no longer allowed at renewal
    /// time and left management (`on_demand_dropped`): it is not renewed.
    OnDemandDropped {
        /// The name.
        name: String,
    },
    /// A storage cleaning pass ran (`storage_cleaned`), by maintenance or
    /// [`Config::clean_storage`](crate::Config::clean_storage): what it
    /// removed and what failed.
    StorageCleaned {
        /// The pass's report.
        report: crate::maintain::CleanReport,
    },
}

impl Event {
    /// The event's name, as in the README (`cert_obtained`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Event::CertObtaining { .. } => "cert_obtaining",
            Event::CertObtained { .. } => "cert_obtained",
            Event::CertRenewed { .. } => "cert_renewed",
            Event::CertFailed { .. } => "cert_failed",
            Event::CertRevoked { .. } => "cert_revoked",
            Event::CachedManagedCert { .. } => "cached_managed_cert",
            Event::CertOcspStapled { .. } => "cert_ocsp_stapled",
            Event::CertOcspRevoked { .. } => "cert_ocsp_revoked",
            Event::OnDemandAllowed { .. } => "on_demand_allowed",
            Event::OnDemandRefused { .. } => "on_demand_refused",
            Event::OnDemandRateLimited { .. } => "on_demand_rate_limited",
            Event::OnDemandObtained { .. } => "on_demand_obtained",
            Event::OnDemandFailed { .. } => "on_demand_failed",
            Event::OnDemandDropped { .. } => "on_demand_dropped",
            Event::StorageCleaned { .. } => "storage_cleaned",
        }
    }

    /// The names the event is about.
    pub fn names(&self) -> &[String] {
        match self {
            Event::CertObtaining { names, .. }
            | Event::CertObtained { names, .. }
            | Event::CertRenewed { names, .. }
            | Event::CertFailed { names, .. }
            | Event::CertRevoked { names, .. }
            | Event::CachedManagedCert { names, .. }
            | Event::CertOcspStapled { names, .. }
            | Event::CertOcspRevoked { names, .. } => names,
            Event::OnDemandAllowed { name }
            | Event::OnDemandRefused { name, .. }
            | Event::OnDemandRateLimited { name }
            | Event::OnDemandObtained { name, .. }
            | Event::OnDemandFailed { name, .. }
            | Event::OnDemandDropped { name } => std::slice::from_ref(name),
            Event::StorageCleaned { .. } => &[],
        }
    }
}

/// A callback receiving events. It runs inline: keep it quick and never block.
pub type EventHandler = Arc<dyn Fn(&Event) + Send + Sync>;
