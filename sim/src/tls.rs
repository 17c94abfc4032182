//! Serving TLS, as a production cluster does: the server's certificate
//! and key, and for mutual TLS the CA client certificates must chain to
//! (TiKV's and PD's `security.cert-path`, `key-path`, `ca-path`; with a CA
//! set, a client without a certificate is refused, as TiKV does).

use std::sync::{Arc, Mutex, PoisonError};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// The TLS side of a [`crate::server::SimServer`]: every PD and store
/// listener serves TLS with it. Clones share the record of the client
/// certificates presented ([`ServerTls::client_certificates`]).
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    client_certificates: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl ServerTls {
    /// A server presenting `cert` (a PEM chain, leaf first) with its
    /// private `key`; with `client_ca`, clients must present a certificate
    /// chaining to it (mutual TLS). The error says what was wrong.
    pub fn from_pem(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("server certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("server key: {e}"))?;
        // The client's provider (see `tikv_grpc::tls`): rustls deprecates
        // ring only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| format!("client CA: {e}"))?;
                    roots.add(cert).map_err(|e| format!("client CA: {e}"))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| format!("client CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_single_cert(chain, key).map_err(|e| format!("server certificate: {e}"))?;
        // gRPC runs over HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls { config: Arc::new(config), client_certificates: Arc::default() })
    }

    /// Reads the PEM files and builds [`ServerTls::from_pem`].
    pub fn from_files(
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let ca = client_ca.map(read).transpose()?;
        ServerTls::from_pem(&read(cert)?, &read(key)?, ca.as_deref())
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Notes the certificate the client of an accepted connection presented.
    pub(crate) fn accepted(&self, session: &rustls::ServerConnection) {
        if let Some(leaf) = session.peer_certificates().and_then(|chain| chain.first()) {
            let mut seen = self.client_certificates.lock().unwrap_or_else(PoisonError::into_inner);
            seen.push(leaf.to_vec());
        }
    }

    /// The certificates (DER) clients presented on the connections
    /// accepted so far, in order (a client's leaf certificate, one entry per
    /// connection; mutual TLS only): tests see which certificate a new
    /// connection used.
    pub fn client_certificates(&self) -> Vec<Vec<u8>> {
        self.client_certificates.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
