//! Typed per-certificate maintenance state: what the CA said about when to
//! renew the certificate now serving (RFC 9773). The retry schedule of failed
//! attempts is the lifecycle's (`config/retry.rs`).

use std::collections::HashMap;
use std::time::SystemTime;

use crate::identifier::Identifier;

/// The ARI state of every managed certificate, by primary name.
pub(crate) type States = HashMap<Identifier, AriState>;

/// What the CA said about when to renew one certificate (RFC 9773).
#[derive(Debug, Clone)]
pub(crate) struct AriState {
    /// The certificate this is about; state for another serial is stale.
    pub(crate) serial: String,
    /// The window and the time chosen in it; `None` when the CA has no ARI or failed.
    pub(crate) window: Option<AriWindow>,
    /// The page the CA gave to explain the window (`explanationURL`), if any.
    pub(crate) explanation_url: Option<String>,
    /// When to ask the CA again.
    pub(crate) next_fetch: SystemTime,
}

/// An ARI window with the renewal time chosen in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AriWindow {
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) chosen: SystemTime,
}
