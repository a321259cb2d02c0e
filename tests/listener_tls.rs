//! TLS on the listeners (`tls_cert_file`, `tls_key_file`), with a CA generated per test: an
//! HTTPS write and a TLS TCP stream arrive; a client that does not speak TLS is closed and
//! logged with its peer; a broken key file is a startup error naming the key.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{toml_path, write_config, Daemon, FakeInflux};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

const T: Duration = Duration::from_secs(30);

/// A CA and a certificate for 127.0.0.1 signed by it, written under `dir`: (CA PEM, cert
/// file, key file).
fn generate(dir: &Path) -> (String, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca.pem(), cert, key)
}

fn config(dir: &Path, url: &str, cert: &Path, key: &Path) -> PathBuf {
    let tls = format!(
        "tls_cert_file = {}\ntls_key_file = {}",
        toml_path(cert),
        toml_path(key)
    );
    write_config(
        dir,
        &format!(
            r#"
state_dir = {state}
[agent]
flush_interval = "20ms"
shutdown_timeout = "3s"
[output]
url = "{url}"
bucket = "b"
[[input.http]]
listen = "127.0.0.1:0"
{tls}
[[input.tcp]]
listen = "127.0.0.1:0"
{tls}
"#,
            state = toml_path(&dir.join("state")),
        ),
    )
}

fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Writes `data` over TLS to `addr` and reads the reply until the server closes.
fn tls_exchange(ca_pem: &str, addr: SocketAddr, data: &[u8]) -> String {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(client_config(ca_pem), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(data).unwrap();
    tls.flush().unwrap();
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn https_writes_and_tls_tcp_streams_arrive_and_plain_clients_are_refused() {
    let fake = FakeInflux::start();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = generate(dir.path());
    let mut d = Daemon::start(&config(dir.path(), &fake.url(), &cert, &key));
    let http: SocketAddr = d
        .log_field("lineship started", "http input listening", "listen")
        .parse()
        .unwrap();
    let tcp: SocketAddr = d
        .log_field("lineship started", "tcp input listening", "listen")
        .parse()
        .unwrap();
    let body = "m,via=https v=1i 1\n";
    let reply = tls_exchange(
        &ca,
        http,
        format!(
            "POST /api/v2/write?bucket=b HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert!(reply.starts_with("HTTP/1.1 204"), "{reply}");
    {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(client_config(&ca), name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, TcpStream::connect(tcp).unwrap());
        s.write_all(b"m,via=tls-tcp v=2i 2\n").unwrap();
        s.flush().unwrap();
        s.conn.send_close_notify();
        let _ = s.flush();
    }
    assert!(common::wait_until(T, || fake.accepted_line_count() == 2));
    let mut lines = fake.accepted_lines();
    lines.sort();
    assert_eq!(lines, ["m,via=https v=1i 1", "m,via=tls-tcp v=2i 2"]);

    // Plain HTTP to the TLS port: closed, logged with the peer; plain TCP likewise.
    let mut plain = TcpStream::connect(http).unwrap();
    plain
        .write_all(b"POST /api/v2/write?bucket=b HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nm v=3i 3\n")
        .unwrap();
    plain.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).contains("204"));
    let mut plain_tcp = TcpStream::connect(tcp).unwrap();
    plain_tcp.write_all(b"m v=4i 4\n").unwrap();
    plain_tcp.set_read_timeout(Some(T)).unwrap();
    let _ = plain_tcp.read_to_end(&mut got);
    assert!(
        d.wait_for_stderr("TLS handshake failed", T),
        "{}",
        d.stderr_so_far()
    );
    assert!(d.wait_for_stderr("TLS failed", T), "{}", d.stderr_so_far());
    d.terminate();
    let out = d.wait(T);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        fake.accepted_line_count(),
        2,
        "nothing sent in plain text arrived"
    );
}

#[test]
fn a_broken_key_file_is_a_startup_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = generate(dir.path());
    std::fs::write(&key, "not a key\n").unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9", &cert, &key);
    let out = common::run_with_timeout(
        {
            let mut c = common::lineship_command();
            c.arg("--config").arg(&cfg);
            c
        },
        b"",
        T,
    );
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("input.tcp[0].tls_key_file` = ")
            && out.stderr.contains("no PEM private key"),
        "{}",
        out.stderr
    );
}
