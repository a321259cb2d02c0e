//! `https://` outputs: a local TLS fake server whose CA is generated here. Delivery works with
//! `tls_ca_file` pointing at that CA, and fails with a clear certificate error without it.

mod common;

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lineship::{Io, Settings};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_rustls::rustls;

struct TlsFake {
    addr: SocketAddr,
    ca_pem: String,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

async fn start_tls_fake() -> TlsFake {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let recorded = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, recorded) = (acceptor.clone(), recorded.clone());
            tokio::spawn(async move {
                // A client that rejects our certificate aborts the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let recorded = recorded.clone();
                    async move {
                        // Writes only: the health probe's `GET /ping` carries nothing.
                        let is_write = req.method() == hyper::Method::POST;
                        let body = req.into_body().collect().await?.to_bytes();
                        if is_write {
                            recorded
                                .lock()
                                .unwrap()
                                .push(common::gunzip(&body).unwrap_or_default());
                        }
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .status(204)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsFake {
        addr,
        ca_pem: ca.pem(),
        bodies,
    }
}

fn settings(url: &str, state: &std::path::Path, ca_file: Option<&std::path::Path>) -> Settings {
    let ca = ca_file.map_or(String::new(), |p| format!("tls_ca_file = {p:?}"));
    Settings::from_toml(
        &format!(
            r#"
state_dir = {state:?}
[agent]
shutdown_timeout = "2s"
[output]
url = "{url}"
org = "o"
bucket = "b"
token = "t"
initial_backoff = "10ms"
max_backoff = "50ms"
{ca}
[input.stdin]
enabled = true
"#
        ),
        false,
        |_| None,
    )
    .unwrap()
}

async fn run(s: Settings) -> lineship::Report {
    let io = Io {
        stdin: Some(Box::new(Cursor::new(b"m v=1i 1\n".to_vec()))),
        ..Default::default()
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        lineship::run(s, io, std::future::pending()),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_delivers_with_the_configured_ca() {
    let fake = start_tls_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &fake.ca_pem).unwrap();
    let url = format!("https://127.0.0.1:{}", fake.addr.port());
    let report = run(settings(&url, &dir.path().join("state"), Some(&ca))).await;
    assert_eq!(report.lines_delivered, 1);
    assert_eq!(*fake.bodies.lock().unwrap(), vec![b"m v=1i 1\n".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_the_ca_fails_with_a_certificate_error() {
    let fake = start_tls_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{}", fake.addr.port());
    let stats = Arc::new(lineship::telemetry::Stats::default());
    let io = Io {
        stdin: Some(Box::new(Cursor::new(b"m v=1i 1\n".to_vec()))),
        stats: Some(stats.clone()),
        ..Default::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        lineship::run(
            {
                // One attempt, then the last try at shutdown: the health message is the
                // certificate error, not a request cut short by the deadline.
                let mut s = settings(&url, &dir.path().join("state"), None);
                s.outputs[0].initial_backoff = Duration::from_secs(5);
                s.outputs[0].max_backoff = Duration::from_secs(5);
                s
            },
            io,
            std::future::pending(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.lines_spooled, 1, "kept in the spool, not dropped");
    assert!(fake.bodies.lock().unwrap().is_empty());
    let health = stats.outputs()[0].health.lock().unwrap().clone();
    assert!(!health.ok);
    assert!(
        health.message.to_lowercase().contains("certificate"),
        "the error says what is wrong: {}",
        health.message
    );
}
