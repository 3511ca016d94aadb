//! [`ServerLimits`]: how long and how many clients an HTTP(S) server serves.

use std::time::Duration;

use super::acceptor::{DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_PENDING_HANDSHAKES};

/// The bounds a server puts on its clients, so that slow or idle clients
/// cannot hold connections forever. certauto-axum applies them with hyper's
/// timers, certauto-actix with actix-http's settings (and, for
/// `bind_acme`, actix-web's `HttpServer` settings).
///
/// | setting | default | bounds |
/// |---|---|---|
/// | [`header_read_timeout`](Self::header_read_timeout) | 10 s | a client sending its request headers |
/// | [`idle_timeout`](Self::idle_timeout) | 60 s | a connection on which nothing is read or written |
/// | [`max_connections`](Self::max_connections) | 10,000 | connections served at once |
/// | [`handshake_timeout`](Self::handshake_timeout) | 10 s | a TLS handshake (HTTPS only) |
/// | [`max_pending_handshakes`](Self::max_pending_handshakes) | 4096 | TLS handshakes in progress (HTTPS only) |
///
/// Connections beyond the caps wait in the kernel's accept queue; they are
/// not refused.
///
/// ```
/// use std::time::Duration;
/// use certauto_core::ServerLimits;
///
/// let limits = ServerLimits::default()
///     .header_read_timeout(Duration::from_secs(5))
///     .max_connections(1_000);
/// assert_eq!(limits.header_read_timeout_value(), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    handshake_timeout: Duration,
    max_pending_handshakes: usize,
}

impl ServerLimits {
    /// The default time a client has to send a request's headers.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default time a connection may stay without traffic.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// The default number of connections served at once.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

    /// How long a client may take to send a request's headers (default 10 s),
    /// from when the server starts waiting for them: for HTTP/1.1 that is
    /// also the wait for the next request on a kept-alive connection. The
    /// connection is closed when it runs out. Zero is raised to 1 ms.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a connection may go with nothing read or written (default
    /// 60 s) before it is shut down gracefully (HTTP/2: a GOAWAY). Zero is
    /// raised to 1 ms.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many connections are served at once (default 10,000; at least 1).
    /// certauto-actix applies it per worker, as actix-web does.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long a TLS handshake may take (default 10 s), from the first byte
    /// read to the finished handshake. Zero is raised to 1 ms.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many TLS handshakes may be in progress at once (default 4096; at
    /// least 1).
    pub fn max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending_handshakes = max.max(1);
        self
    }

    /// The header-read timeout.
    pub fn header_read_timeout_value(&self) -> Duration {
        self.header_read_timeout
    }

    /// The idle timeout.
    pub fn idle_timeout_value(&self) -> Duration {
        self.idle_timeout
    }

    /// The connection cap.
    pub fn max_connections_value(&self) -> usize {
        self.max_connections
    }

    /// The TLS handshake timeout.
    pub fn handshake_timeout_value(&self) -> Duration {
        self.handshake_timeout
    }

    /// The bound on TLS handshakes in progress.
    pub fn max_pending_handshakes_value(&self) -> usize {
        self.max_pending_handshakes
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let limits = ServerLimits::default();
        assert_eq!(limits.header_read_timeout_value(), Duration::from_secs(10));
        assert_eq!(limits.idle_timeout_value(), Duration::from_secs(60));
        assert_eq!(limits.max_connections_value(), 10_000);
        assert_eq!(limits.handshake_timeout_value(), Duration::from_secs(10));
        assert_eq!(limits.max_pending_handshakes_value(), 4096);
    }

    #[test]
    fn zero_values_are_raised() {
        let limits = ServerLimits::default()
            .header_read_timeout(Duration::ZERO)
            .idle_timeout(Duration::ZERO)
            .handshake_timeout(Duration::ZERO)
            .max_connections(0)
            .max_pending_handshakes(0);
        assert_eq!(limits.header_read_timeout_value(), Duration::from_millis(1));
        assert_eq!(limits.idle_timeout_value(), Duration::from_millis(1));
        assert_eq!(limits.handshake_timeout_value(), Duration::from_millis(1));
        assert_eq!(limits.max_connections_value(), 1);
        assert_eq!(limits.max_pending_handshakes_value(), 1);
    }
}
