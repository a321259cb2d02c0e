//! TLS for the listeners (`tls_cert_file` and `tls_key_file` of `[[input.http]]` and
//! `[[input.tcp]]`): a rustls server configuration from PEM files, loaded at startup so that a
//! missing or broken file is a startup error naming its key.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// The server configuration for one listener; `key` is its config table (`input.http[0]`).
pub fn server_config(key: &str, files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = read_certs(&files.cert).with_context(|| {
        format!(
            "config key `{key}.tls_cert_file` = {:?}",
            files.cert.display()
        )
    })?;
    let private = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        anyhow::anyhow!(
            "config key `{key}.tls_key_file` = {:?}: no PEM private key could be read ({e}); it must hold the certificate's key (PKCS#8, PKCS#1 or SEC1) and be readable by this user",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .with_context(|| {
            format!("config keys `{key}.tls_cert_file` and `{key}.tls_key_file`: the key does not match the certificate, or the certificate is not usable")
        })?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("cannot read it as PEM: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("a certificate in it is not valid PEM: {e}"))?;
    if certs.is_empty() {
        anyhow::bail!("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    Ok(certs)
}
