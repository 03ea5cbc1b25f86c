//! TLS set-up, in one place: the data-plane listener's server config from `[server.tls]`, and
//! the client side (system roots, an upstream's `ca_file`) for upstreams and key fetches.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Builds the rustls server config from PEM files: TLS 1.2 and 1.3 with rustls' modern cipher
/// suites (aws-lc-rs), ALPN h2 then http/1.1.
pub fn tls_config(t: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = read_certs(&t.cert).map_err(|e| format!("tls cert {}: {e}", t.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls cert {}: no certificate in the file", t.cert.display()));
    }
    let key = crate::files::read(&t.key)
        .map_err(|e| e.to_string())
        .and_then(|pem| PrivateKeyDer::from_pem_slice(&pem).map_err(|e| e.to_string()))
        .map_err(|e| format!("tls key {}: {e}", t.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls {} / {}: {e}", t.cert.display(), t.key.display()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn native_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut store = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "skipping an unreadable system root certificate");
        }
        store.add_parsable_certificates(found.certs);
        store
    })
}

/// Every certificate in a PEM file.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = crate::files::read(path).map_err(|e| e.to_string())?;
    CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// Reads a PEM bundle of CA certificates.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = read_certs(path)?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".to_owned());
    }
    Ok(certs)
}

/// An http+https connector: system roots plus `extra_roots` (an upstream's `ca_file`), ALPN h2
/// and http/1.1.
pub fn https_connector(
    extra_roots: &[CertificateDer<'static>],
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut roots = native_roots().clone();
    for cert in extra_roots {
        roots.add(cert.clone()).map_err(|e| format!("CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}
