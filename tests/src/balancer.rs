//! A loopback round-robin TCP balancer: each accepted connection goes to the
//! next backend in turn, bytes copied both ways; it records which backend
//! got each connection. For cluster tests where a validator must reach any
//! instance (tests of `DistributedSolver`).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The most connections relayed at once (others wait in the accept queue).
const MAX_CONNECTIONS: usize = 256;
/// How long connecting to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one relayed connection may live.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// A running balancer on `127.0.0.1`; stops when dropped.
#[derive(Debug)]
pub struct Balancer {
    addr: SocketAddr,
    served: Arc<Vec<AtomicUsize>>,
    failed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Balancer {
    /// Listens on `127.0.0.1:port` (0 for any free port) and relays each
    /// connection to the next of `backends`.
    pub async fn start(port: u16, backends: Vec<SocketAddr>) -> std::io::Result<Balancer> {
        assert!(!backends.is_empty(), "a balancer needs backends");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let addr = listener.local_addr()?;
        let served: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let failed = Arc::new(AtomicUsize::new(0));
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let (served2, failed2) = (served.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let index = next % backends.len();
                next = next.wrapping_add(1);
                let backend = backends[index];
                let (served, failed) = (served2.clone(), failed2.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    relay(client, backend, index, &served, &failed).await;
                });
            }
        });
        Ok(Balancer {
            addr,
            served,
            failed,
            task,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections each backend got, in the order given.
    pub fn connections(&self) -> Vec<usize> {
        self.served
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .collect()
    }

    /// How many connections no backend accepted.
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }
}

async fn relay(
    mut client: TcpStream,
    backend: SocketAddr,
    index: usize,
    served: &[AtomicUsize],
    failed: &AtomicUsize,
) {
    let Ok(Ok(mut upstream)) =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await
    else {
        failed.fetch_add(1, Ordering::SeqCst);
        return;
    };
    if let Some(n) = served.get(index) {
        n.fetch_add(1, Ordering::SeqCst);
    }
    let _ = tokio::time::timeout(
        CONNECTION_LIFETIME,
        tokio::io::copy_bidirectional(&mut client, &mut upstream),
    )
    .await;
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
