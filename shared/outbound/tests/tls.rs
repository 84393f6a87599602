//! The receivers' TLS: the client speaks TLS through rustls on ring and trusts only the webpki
//! roots, so a receiver whose certificate no public authority issued is refused at the
//! handshake, with the reason, and nothing is sent.
#![cfg(feature = "ring")]

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use touchpoint_outbound::{Outbound, SendError};

/// A throwaway self-signed certificate for `localhost` and 127.0.0.1 (100 years), made for
/// this test with `openssl req -x509 -newkey ec`.
const CERT: &[u8] = include_bytes!("fixtures/self-signed.crt");
const KEY: &[u8] = include_bytes!("fixtures/self-signed.key");

/// A TLS server on loopback; reports how each handshake ended.
async fn tls_server() -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<Result<Vec<u8>, String>>,
) {
    let certs = vec![CertificateDer::from_pem_slice(CERT).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let outcome = match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let mut request = vec![0u8; 4096];
                        let n = tls.read(&mut request).await.unwrap_or(0);
                        request.truncate(n);
                        Ok(request)
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(outcome);
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn a_receiver_with_an_untrusted_certificate_is_refused_at_the_handshake() {
    let (port, mut handshakes) = tls_server().await;
    // Private networks allowed, so that only TLS stands between the client and the server.
    let outbound = Outbound::new(true).unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let err = outbound
            .post_json(
                &format!("https://{host}:{port}/touch?token=secret"),
                br#"{"orderNo":"x"}"#.to_vec(),
                &[],
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        let SendError::Connect(why) = &err else {
            panic!("{host}: expected a connection failure, got {err:?}");
        };
        assert!(
            why.contains("certificate") && why.contains("UnknownIssuer"),
            "{host}: the reason names the certificate: {why}"
        );
        assert!(
            !why.contains("secret"),
            "the URL's query is not in the reason: {why}"
        );
        assert!(err.retryable(), "a receiver may fix its certificate");
        // The server saw a TLS client that refused its certificate: nothing was sent.
        let seen = tokio::time::timeout(Duration::from_secs(5), handshakes.recv())
            .await
            .unwrap()
            .unwrap();
        let alert = seen.unwrap_err();
        assert!(
            alert.contains("UnknownCA") || alert.contains("BadCertificate"),
            "{host}: the client alerted the server: {alert}"
        );
    }
}

#[tokio::test]
async fn https_to_a_server_that_does_not_speak_tls_fails_cleanly() {
    // An https:// URL pointed at a server that does not speak TLS: a clear connection failure
    // (not a hang, not a panic).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let outbound = Outbound::new(true).unwrap();
    let err = outbound
        .post_json(
            &format!("https://127.0.0.1:{port}/"),
            b"{}".to_vec(),
            &[],
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, SendError::Connect(_) | SendError::Transport(_)),
        "{err:?}"
    );
}
