//! PEM files → a rustls `ServerConfig`.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// Which application protocols a listener offers in ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only: WebSocket (RFC 6455) upgrades are HTTP/1.1 requests.
    Http1,
    /// `h2` then `http/1.1`: the HTTP API speaks both.
    Http2AndHttp1,
}

/// Read a certificate chain (leaf first) and its private key (PKCS#8, PKCS#1
/// or SEC1) from PEM files and build a server config with the ring
/// provider and rustls' safe defaults (TLS 1.2 and 1.3).
///
/// Errors name the file and the problem: unreadable, no certificate, no key,
/// or a key that does not match the certificate.
pub fn server_config(cert: &Path, key: &Path, alpn: Alpn) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read(cert, "certificate")?;
    let key_pem = read(key, "private key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificate",
            path: cert.to_owned(),
            why: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate",
            path: cert.to_owned(),
            why: "no CERTIFICATE block found".to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: key.to_owned(),
        why: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY block (PKCS#8, RSA or EC) found".to_owned()
            }
            other => other.to_string(),
        },
    })?;
    let config_err = |source| TlsError::Config {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(config_err)?;
    config.alpn_protocols = match alpn {
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
        Alpn::Http2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_the_path() {
        let e = server_config(
            Path::new("/nonexistent/cert.pem"),
            Path::new("/nonexistent/key.pem"),
            Alpn::Http1,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
        assert!(e.contains("certificate"), "{e}");
    }

    #[test]
    fn garbage_pem_is_refused() {
        let dir = std::env::temp_dir().join(format!("tern-tls-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, b"not a pem file\n").ok();
        std::fs::write(&key, b"not a pem file\n").ok();
        let e = server_config(&cert, &key, Alpn::Http1)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
