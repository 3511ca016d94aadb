//! A fault injector: a loopback TCP proxy in front of a real server (Redis in
//! the tests) that passes bytes through both ways until a fault is armed, and
//! then produces, once, a fault no real server produces on demand:
//!
//! - [`FaultProxy::cut_after_reply`]: the command containing a trigger is
//!   passed on and run by the server, its reply is held back, the test does
//!   what it wants meanwhile (another client's write), and then the client's
//!   connection is cut without the reply: the client sees a dropped
//!   connection for a command that did run.
//! - [`FaultProxy::hold`]: the bytes from the command containing a trigger on
//!   are held back (the command is sent but does not reach the server) until
//!   the test releases them: a command delayed in flight, as by a paused
//!   process or a slow network.
//!
//! The trigger is a byte string the command carries (a key name); it is
//! looked for in what the client writes, across read boundaries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest the proxy waits on the test or the server while a fault is
/// under way.
const FAULT_WAIT: Duration = Duration::from_secs(60);
/// The most connections the proxy accepts.
const MAX_CONNECTIONS: usize = 1000;
/// The most bytes of a client's stream kept to find a trigger split across reads.
const TRIGGER_WINDOW: usize = 4096;

/// The armed fault.
enum Armed {
    Cut {
        trigger: Vec<u8>,
        ran: oneshot::Sender<()>,
        cut: oneshot::Receiver<()>,
    },
    Hold {
        trigger: Vec<u8>,
        held: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    },
}

impl Armed {
    fn trigger(&self) -> &[u8] {
        match self {
            Armed::Cut { trigger, .. } | Armed::Hold { trigger, .. } => trigger,
        }
    }
}

type Slot = Arc<Mutex<Option<Armed>>>;

/// A loopback proxy that injects one fault at a time (see the module docs).
/// Stops (and drops its connections) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    armed: Slot,
    task: JoinHandle<()>,
}

/// A [`FaultProxy::cut_after_reply`] under way.
#[derive(Debug)]
pub struct CutFault {
    ran: oneshot::Receiver<()>,
    cut: oneshot::Sender<()>,
}

impl CutFault {
    /// Waits until the server has run (and answered) the triggering command;
    /// the reply is held back until [`cut`](Self::cut).
    pub async fn ran(&mut self) {
        tokio::time::timeout(FAULT_WAIT, &mut self.ran)
            .await
            .expect("the triggering command within the wait")
            .expect("the proxy dropped the fault");
    }

    /// Cuts the client's connection; the held reply is never delivered.
    pub fn cut(self) {
        let _ = self.cut.send(());
    }
}

/// A [`FaultProxy::hold`] under way.
#[derive(Debug)]
pub struct HoldFault {
    held: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

impl HoldFault {
    /// Waits until the triggering command has been sent by the client and
    /// held back here.
    pub async fn held(&mut self) {
        tokio::time::timeout(FAULT_WAIT, &mut self.held)
            .await
            .expect("the triggering command within the wait")
            .expect("the proxy dropped the fault");
    }

    /// Passes the held bytes on to the server, and everything after them.
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let armed: Slot = Arc::default();
        let slot = armed.clone();
        let task = tokio::spawn(async move {
            let mut connections = Vec::new();
            for _ in 0..MAX_CONNECTIONS {
                let Ok((client, _)) = listener.accept().await else {
                    break;
                };
                let slot = slot.clone();
                connections.push(AbortOnDrop(tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, slot).await;
                    }
                })));
            }
        });
        Self { addr, armed, task }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:<port>/0`: the proxy, as a Redis URL (for a server
    /// without a password).
    pub fn redis_url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Arms a cut: see the module docs.
    pub fn cut_after_reply(&self, trigger: &[u8]) -> CutFault {
        let (ran_tx, ran) = oneshot::channel();
        let (cut, cut_rx) = oneshot::channel();
        self.arm(Armed::Cut {
            trigger: trigger.to_vec(),
            ran: ran_tx,
            cut: cut_rx,
        });
        CutFault { ran, cut }
    }

    /// Arms a hold: see the module docs.
    pub fn hold(&self, trigger: &[u8]) -> HoldFault {
        let (held_tx, held) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        self.arm(Armed::Hold {
            trigger: trigger.to_vec(),
            held: held_tx,
            release: release_rx,
        });
        HoldFault { held, release }
    }

    fn arm(&self, fault: Armed) {
        let mut slot = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(slot.is_none(), "one fault at a time");
        *slot = Some(fault);
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Takes the armed fault if `window` holds its trigger.
fn take_if_triggered(slot: &Slot, window: &[u8]) -> Option<Armed> {
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    let hit = slot.as_ref().is_some_and(|armed| {
        let trigger = armed.trigger();
        !trigger.is_empty() && window.windows(trigger.len()).any(|w| w == trigger)
    });
    if hit { slot.take() } else { None }
}

/// Passes bytes both ways until either side closes, injecting the armed
/// fault when a client chunk carries its trigger.
async fn relay(mut client: TcpStream, mut server: TcpStream, slot: Slot) {
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    let mut window: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => {
                let Ok(n) = read else { return };
                if n == 0 {
                    return;
                }
                let chunk = &from_client[..n];
                window.extend_from_slice(chunk);
                let fault = take_if_triggered(&slot, &window);
                if window.len() > TRIGGER_WINDOW {
                    window.drain(..window.len() - TRIGGER_WINDOW);
                }
                match fault {
                    None => {
                        if server.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                    Some(Armed::Hold { held, release, .. }) => {
                        let _ = held.send(());
                        let _ = tokio::time::timeout(FAULT_WAIT, release).await;
                        window.clear();
                        if server.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                    Some(Armed::Cut { ran, cut, .. }) => {
                        if server.write_all(chunk).await.is_err() {
                            return;
                        }
                        // The reply (at least its first bytes): the command ran.
                        let replied = tokio::time::timeout(FAULT_WAIT, server.read(&mut from_server)).await;
                        if matches!(replied, Ok(Ok(n)) if n > 0) {
                            let _ = ran.send(());
                            let _ = tokio::time::timeout(FAULT_WAIT, cut).await;
                        }
                        // Dropping both streams cuts the client off unanswered.
                        return;
                    }
                }
            }
            read = server.read(&mut from_server) => {
                let Ok(n) = read else { return };
                if n == 0 || client.write_all(&from_server[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
