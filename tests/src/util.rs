//! Process and port plumbing: finding binaries, reserving free loopback ports, reading log
//! tails.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Ports this process has already handed out, so that two harnesses started in parallel in
/// the same test binary never get the same port (the kernel may reuse a just-released
/// ephemeral port).
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Finds `name` in the directories of `$PATH` (an executable regular file).
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is an executable regular file.
#[cfg(unix)]
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `path` is a regular file.
#[cfg(not(unix))]
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Holds sockets bound to `127.0.0.1:<port>` while a set of distinct free ports is being
/// chosen. Dropping it releases the ports, which are then handed to the child processes.
#[derive(Debug, Default)]
pub(crate) struct PortReservation {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

const LOOPBACK_ANY_PORT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);

impl PortReservation {
    /// A free TCP port on 127.0.0.1, distinct from every port reserved so far.
    pub(crate) fn tcp(&mut self) -> u16 {
        for _ in 0..64 {
            let listener =
                TcpListener::bind(LOOPBACK_ANY_PORT).expect("bind 127.0.0.1:0 to find a free port");
            let port = listener
                .local_addr()
                .expect("local_addr of a bound listener")
                .port();
            // Keep holding it either way, so the next bind returns a different port.
            self.tcp.push(listener);
            if claim(port) {
                return port;
            }
        }
        panic!("could not find a free TCP port on 127.0.0.1 after 64 tries");
    }

    /// A port on 127.0.0.1 that is free for both TCP and UDP (for the mock DNS server).
    pub(crate) fn tcp_and_udp(&mut self) -> u16 {
        for _ in 0..64 {
            let listener =
                TcpListener::bind(LOOPBACK_ANY_PORT).expect("bind 127.0.0.1:0 to find a free port");
            let port = listener
                .local_addr()
                .expect("local_addr of a bound listener")
                .port();
            self.tcp.push(listener);
            if let Ok(udp) = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
                self.udp.push(udp);
                if claim(port) {
                    return port;
                }
            }
        }
        panic!("could not find a port free for both TCP and UDP on 127.0.0.1 after 64 tries");
    }
}

/// Records `port` as handed out; false if it already was.
fn claim(port: u16) -> bool {
    HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(port)
}

/// The whole file, lossily decoded (empty if it cannot be read).
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of a log file, for panic messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = read_log(path);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[... {start} earlier lines omitted ...]\n"));
    }
    for line in &all[start..] {
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("[empty]\n");
    }
    out
}
