//! Faults no real CA produces on purpose: over-long, malformed and incomplete
//! responses. A small fault injector (a raw HTTP/1.1 server on loopback)
//! plays the CA; the client must fail with a typed error, never hang or panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use certauto::acme::NewAccountOptions;
use certauto::{AccountKey, AccountKeyType, AcmeClient, AcmeError, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the fault injector answers for a request path.
#[derive(Clone)]
enum Fault {
    /// A fixed response: status line, headers, body.
    Fixed(&'static str, Vec<(String, String)>, Vec<u8>),
    /// A chunked body that never ends within the size bound.
    EndlessChunks,
}

/// Serves `route(path)` for every request until dropped. Loops are bounded:
/// at most 64 connections, each read capped at 64 KiB.
async fn fault_injector(route: fn(&str, SocketAddr) -> Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..64 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut len = 0;
                // Read the request head (bodies are ignored).
                while len < buf.len() {
                    let Ok(n) = sock.read(&mut buf[len..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                match route(&path, addr) {
                    Fault::Fixed(status, headers, body) => {
                        let mut out = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                            body.len()
                        );
                        for (k, v) in headers {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        let _ = sock.write_all(out.as_bytes()).await;
                        let _ = sock.write_all(&body).await;
                    }
                    Fault::EndlessChunks => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                            .await;
                        let chunk = vec![b' '; 16 * 1024];
                        // 4 MiB in all: more than the 1 MiB bound, and finite.
                        for _ in 0..256 {
                            let head = format!("{:x}\r\n", chunk.len());
                            if sock.write_all(head.as_bytes()).await.is_err()
                                || sock.write_all(&chunk).await.is_err()
                                || sock.write_all(b"\r\n").await.is_err()
                            {
                                return;
                            }
                        }
                        let _ = sock.write_all(b"0\r\n\r\n").await;
                    }
                }
            });
        }
    });
    addr
}

fn directory_json(addr: SocketAddr) -> Vec<u8> {
    let base = format!("http://{addr}");
    format!(
        r#"{{"newNonce":"{base}/nonce","newAccount":"{base}/acct","newOrder":"{base}/order","revokeCert":"{base}/revoke","keyChange":"{base}/key"}}"#
    )
    .into_bytes()
}

async fn client_for(addr: SocketAddr) -> Result<AcmeClient, Error> {
    tokio::time::timeout(
        Duration::from_secs(30),
        AcmeClient::builder(format!("http://{addr}/dir")).build(),
    )
    .await
    .expect("the client gave up in bounded time")
}

#[tokio::test]
async fn oversized_directory_is_refused() {
    let addr = fault_injector(|_, _| Fault::Fixed("200 OK", vec![], vec![b' '; 2 << 20])).await;
    let err = client_for(addr).await.unwrap_err();
    assert!(
        matches!(err, Error::Acme(AcmeError::BodyTooLarge { limit, .. }) if limit == 1 << 20),
        "{err}"
    );
}

#[tokio::test]
async fn endless_chunked_body_is_cut_at_the_bound() {
    let addr = fault_injector(|_, _| Fault::EndlessChunks).await;
    let err = client_for(addr).await.unwrap_err();
    assert!(
        matches!(err, Error::Acme(AcmeError::BodyTooLarge { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_directory_is_a_typed_error() {
    let addr =
        fault_injector(|_, _| Fault::Fixed("200 OK", vec![], b"{\"newNonce\": 42".to_vec())).await;
    let err = client_for(addr).await.unwrap_err();
    assert!(
        matches!(err, Error::Acme(AcmeError::InvalidResponse { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn error_page_without_problem_document_keeps_a_snippet() {
    let addr = fault_injector(|_, _| {
        Fault::Fixed(
            "503 Service Unavailable",
            vec![("Content-Type".into(), "text/html".into())],
            b"<html>maintenance</html>".to_vec(),
        )
    })
    .await;
    let err = client_for(addr).await.unwrap_err();
    match err {
        Error::Acme(AcmeError::UnexpectedStatus { status, body, .. }) => {
            assert_eq!(status, 503);
            assert!(body.contains("maintenance"));
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn missing_nonce_and_location_are_typed_errors() {
    let addr = fault_injector(|path, addr| match path {
        "/dir" => Fault::Fixed("200 OK", vec![], directory_json(addr)),
        // A nonce endpoint that forgets the Replay-Nonce header.
        _ => Fault::Fixed("200 OK", vec![], Vec::new()),
    })
    .await;
    let client = client_for(addr).await.unwrap();
    let key = std::sync::Arc::new(AccountKey::generate(AccountKeyType::Es256).unwrap());
    let err = client
        .new_account(key, &NewAccountOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AcmeError::MissingHeader {
                header: "Replay-Nonce",
                ..
            }
        ),
        "{err}"
    );

    // Nonce given, but the account response lacks Location.
    let addr = fault_injector(|path, addr| match path {
        "/dir" => Fault::Fixed("200 OK", vec![], directory_json(addr)),
        "/nonce" => Fault::Fixed(
            "200 OK",
            vec![("Replay-Nonce".into(), "abc_DEF-1".into())],
            Vec::new(),
        ),
        _ => Fault::Fixed(
            "201 Created",
            vec![("Replay-Nonce".into(), "abc_DEF-2".into())],
            br#"{"status":"valid"}"#.to_vec(),
        ),
    })
    .await;
    let client = client_for(addr).await.unwrap();
    let key = std::sync::Arc::new(AccountKey::generate(AccountKeyType::Es256).unwrap());
    let err = client
        .new_account(key, &NewAccountOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AcmeError::MissingHeader {
                header: "Location",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn endless_bad_nonce_is_bounded() {
    let addr = fault_injector(|path, addr| match path {
        "/dir" => Fault::Fixed("200 OK", vec![], directory_json(addr)),
        "/nonce" => Fault::Fixed(
            "200 OK",
            vec![("Replay-Nonce".into(), "n0".into())],
            Vec::new(),
        ),
        _ => Fault::Fixed(
            "400 Bad Request",
            vec![
                ("Content-Type".into(), "application/problem+json".into()),
                ("Replay-Nonce".into(), "n1".into()),
            ],
            br#"{"type":"urn:ietf:params:acme:error:badNonce","detail":"always"}"#.to_vec(),
        ),
    })
    .await;
    let client = client_for(addr).await.unwrap();
    let key = std::sync::Arc::new(AccountKey::generate(AccountKeyType::Es256).unwrap());
    let err = client
        .new_account(key, &NewAccountOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AcmeError::NonceRetriesExhausted { attempts: 21, .. }),
        "{err}"
    );
}

/// A fault injector that closes each of the first `drops` connections as
/// soon as the request head arrived (a reset or a closed idle connection, to
/// the client), then answers the directory. Returns its address and the count
/// of connections it accepted. At most 16 connections.
async fn dropping_injector(drops: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut len = 0;
                while len < buf.len() {
                    match sock.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => len += read,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                if n < drops {
                    // Abortive close: the client sees a reset, not a response.
                    let _ = sock.set_zero_linger();
                    return;
                }
                let body = directory_json(addr);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    (addr, accepted)
}

/// A transport failure (here: connections reset by the peer) is retried a
/// bounded number of times (default 2) before the request fails.
#[tokio::test]
async fn transport_errors_are_retried_a_bounded_number_of_times() {
    let (addr, accepted) = dropping_injector(2).await;
    let client = client_for(addr).await.expect("two resets are retried");
    assert!(client.directory().new_order.ends_with("/order"));
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    let (addr, accepted) = dropping_injector(10).await;
    let err = client_for(addr).await.unwrap_err();
    assert!(
        matches!(err, Error::Acme(AcmeError::Transport { .. })),
        "{err}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one try and two retries"
    );
    // The message carries the cause, not only reqwest's "error sending request".
    let text = err.to_string();
    assert!(
        text.contains("reset") || text.contains("closed") || text.contains("connection"),
        "{text}"
    );
}
