//! TLS with rustls on ring: a listener's certificate and key (replaceable while it runs, so a
//! renewed certificate is served without closing the listener), and the client side the
//! gateway uses towards an HTTPS upstream (the Mozilla roots, or only a configured CA; the
//! certificate is always checked). The handshake itself runs in [`crate::edge`], under its own
//! deadline. Reading files is the binary's business; this module takes PEM bytes.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::{Arc, RwLock};
pub use tokio_rustls::rustls;

/// The one crypto provider: ring, which keyplane already uses for everything else.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Only HTTP/1.1 is served and spoken (ALPN).
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The certificates of a PEM file (a chain: the leaf first, then intermediates). `file` names
/// it in errors.
pub fn certificates(pem_bytes: &[u8], file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{file} is not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{file} holds no certificate (expected -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

/// A listener's certificate chain and private key, checked to belong together.
pub fn certified_key(
    cert_pem: &[u8],
    cert_file: &str,
    key_pem: &[u8],
    key_file: &str,
) -> Result<CertifiedKey, String> {
    let certs = certificates(cert_pem, cert_file)?;
    // The key's own bytes never reach an error message: only what kind of problem it is.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{key_file} holds no private key (expected a PEM PKCS#8, RSA or EC private key)"
        ),
        _ => format!("{key_file} is not a valid PEM private key"),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| format!("{key_file}: the private key's type is not supported (use ECDSA P-256/P-384, Ed25519 or RSA)"))?;
    let key = CertifiedKey::new(certs, signing);
    match key.keys_match() {
        Ok(()) => Ok(key),
        // The key's public half cannot be derived for every key type: then rustls cannot tell.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(key),
        Err(_) => Err(format!(
            "the private key in {key_file} does not belong to the certificate in {cert_file}"
        )),
    }
}

/// A listener's certificate and key. [`ServerCerts::replace`] swaps them for every handshake
/// from then on; connections already open keep theirs.
pub struct ServerCerts {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCerts {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(key)),
        })
    }

    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl std::fmt::Debug for ServerCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCerts(<redacted>)")
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A listener's TLS settings: TLS 1.2 and 1.3 with rustls' safe defaults, no client
/// certificates, HTTP/1.1 by ALPN, and the certificate `certs` holds at each handshake.
pub fn server_config(certs: Arc<ServerCerts>) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The client side towards an upstream: with `ca` (PEM bytes and the file's name), only the
/// certificates it holds are trusted; without it, the Mozilla roots (webpki-roots). The server's
/// certificate and name are always checked: there is no way to turn that off.
pub fn client_config(ca: Option<(&[u8], &str)>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some((pem_bytes, file)) => {
            for cert in certificates(pem_bytes, file)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{file}: a certificate cannot be used as a CA: {e}"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    // No ALPN here: the connector (hyper-rustls) offers what it speaks, HTTP/1.1.
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Why a TLS connection failed, when an error (or one of its causes) is rustls': a refused
/// certificate, a handshake alert, … `None` for anything else.
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        // An `io::Error`'s `source()` skips the error it wraps (and connectors wrap one in
        // another): look inside it instead.
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|i| i as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}
