//! TLS for the client's connections, shared by every runtime: the rustls
//! client configuration made from a [`TlsConfig`] (certificates read anew
//! for each connection, as client-go reloads them on each handshake), the
//! name a server's certificate must carry, the refusal of `https://`
//! addresses without TLS, and TLS failures told apart from other
//! connection errors (they become [`RpcError::Tls`], never retried).
//!
//! The runtime crates only run the handshake, each with its own rustls
//! stream adapter (tokio-rustls, futures-rustls).

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use tikv_core::config::{PemSource, TlsConfig};
use tikv_core::rpc::RpcError;

use crate::TransportConfig;

/// A TLS setup failure of the client itself (unreadable or invalid
/// certificates), carried through I/O error chains so it reaches the caller
/// as [`RpcError::Tls`].
#[derive(Debug)]
pub struct TlsSetupError(pub String);

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for TlsSetupError {}

impl From<TlsSetupError> for RpcError {
    fn from(e: TlsSetupError) -> RpcError {
        RpcError::Tls(e.0)
    }
}

impl From<TlsSetupError> for io::Error {
    fn from(e: TlsSetupError) -> io::Error {
        io::Error::other(e)
    }
}

/// The TLS client side of one new connection: its rustls configuration,
/// and what the handshake learnt ([`ClientTls::check_handshake`]).
#[derive(Debug)]
pub struct ClientTls {
    /// The configuration to hand the handshake.
    pub config: Arc<ClientConfig>,
    /// Without a client certificate configured: set when the server asks
    /// for one.
    asked_for_certificate: Option<Arc<AtomicBool>>,
}

impl ClientTls {
    /// After a successful handshake: refuses a server that asked for a
    /// client certificate when none is configured. TiKV and PD ask only
    /// when they require one (their `security.ca-path`), and with TLS 1.3
    /// they refuse the missing certificate after the client's side of the
    /// handshake is done, so the refusal would otherwise surface later, on
    /// the HTTP/2 connection, sometimes only as a closed connection.
    pub fn check_handshake(&self) -> Result<(), TlsSetupError> {
        match &self.asked_for_certificate {
            Some(asked) if asked.load(Ordering::Relaxed) => Err(TlsSetupError(
                "the server requires a client certificate (mutual TLS) and none is configured \
                 (TlsConfig::identity)"
                    .into(),
            )),
            _ => Ok(()),
        }
    }
}

/// The client certificate resolver without a certificate: notes that the
/// server asked for one.
#[derive(Debug)]
struct NoCertificate(Arc<AtomicBool>);

impl ResolvesClientCert for NoCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// The client side of one new connection, with the certificates read now:
/// files rotated on disk take effect on the next connection. Servers are
/// asked for HTTP/2 by ALPN, as gRPC requires.
pub fn client_config(tls: &TlsConfig) -> Result<ClientTls, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let ca = read(&tls.ca, "CA")?;
    for cert in certs(&ca, "CA")? {
        roots.add(cert).map_err(|e| TlsSetupError(format!("CA certificate: {e}")))?;
    }
    let provider = Arc::new(ring_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(e.to_string()))?
        .with_root_certificates(roots);
    let mut asked_for_certificate = None;
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = certs(&read(cert, "client certificate")?, "client certificate")?;
            let key = PrivateKeyDer::from_pem_slice(&read(key, "client key")?)
                .map_err(|e| TlsSetupError(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsSetupError(format!("client certificate: {e}")))?
        }
        (None, None) => {
            let asked = Arc::new(AtomicBool::new(false));
            asked_for_certificate = Some(asked.clone());
            builder.with_client_cert_resolver(Arc::new(NoCertificate(asked)))
        }
        _ => {
            return Err(TlsSetupError(
                "a client certificate needs its key, and a key its certificate".into(),
            ));
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ClientTls { config: Arc::new(config), asked_for_certificate })
}

/// The name `host`'s certificate must carry: [`TlsConfig::server_name`] if
/// set, else the host itself (an IP address is checked against the
/// certificate's IP names).
pub fn server_name(tls: &TlsConfig, host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_owned())
        .map_err(|e| TlsSetupError(format!("server name {name:?}: {e}")))
}

/// Refuses an `https://` address when TLS is not configured: speaking
/// cleartext to a TLS port would only fail later and obscurely.
pub fn check_scheme(addr: &str, config: &TransportConfig) -> Result<(), RpcError> {
    let https = addr.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if https && config.tls.is_none() {
        return Err(RpcError::Tls(format!(
            "{addr} asks for TLS, but the client has no TLS configured (TransportConfig::tls)"
        )));
    }
    Ok(())
}

/// How rustls words a fatal alert from the peer. With TLS 1.3 a server
/// refuses the client's certificate (or its lack of one) after the client's
/// side of the handshake is done, so the alert arrives on the HTTP/2
/// connection, and h2 keeps only the text of the I/O error carrying it.
const ALERT_TEXT: &str = "received fatal alert";

/// The TLS failure in `err`'s source chain, if any: a certificate the peer
/// or this client refused, an alert from the peer, or this client's own
/// TLS setup failing.
pub fn tls_failure(err: &(dyn Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(err) = next {
        let text = err.to_string();
        if text.contains(ALERT_TEXT) {
            return Some(text);
        }
        // `io::Error::source` skips the error it wraps: look inside.
        let inner = err.downcast_ref::<io::Error>().and_then(|e| e.get_ref()).map(|e| e as _);
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(e) = candidate.downcast_ref::<rustls::Error>() {
                return Some(e.to_string());
            }
            if let Some(e) = candidate.downcast_ref::<TlsSetupError>() {
                return Some(e.0.clone());
            }
        }
        next = err.source();
    }
    None
}

/// rustls on ring: it builds with a C compiler alone (aws-lc-rs also needs
/// cmake and takes several times longer). rustls deprecates it only for
/// lacking post-quantum key exchange, which TiKV and PD do not offer.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read(source: &PemSource, what: &str) -> Result<Vec<u8>, TlsSetupError> {
    match source {
        PemSource::Pem(text) => Ok(text.clone()),
        PemSource::File(path) => std::fs::read(path)
            .map_err(|e| TlsSetupError(format!("{what} {}: {e}", path.display()))),
    }
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsSetupError(format!("{what}: no certificate in the PEM text")));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_needs_tls_configured() {
        let plain = TransportConfig::default();
        assert!(
            matches!(check_scheme("HTTPS://pd:2379", &plain), Err(RpcError::Tls(m)) if m.contains("no TLS"))
        );
        assert_eq!(check_scheme("http://pd:2379", &plain), Ok(()));
        assert_eq!(check_scheme("pd:2379", &plain), Ok(()));
        let tls = plain.tls(TlsConfig::new(PemSource::pem("")));
        assert_eq!(check_scheme("https://pd:2379", &tls), Ok(()));
    }

    #[test]
    fn unreadable_certificates_are_setup_errors() {
        let missing = TlsConfig::new(PemSource::file("/nonexistent/ca.pem"));
        let e = client_config(&missing).unwrap_err();
        assert!(e.0.contains("/nonexistent/ca.pem"), "{e}");
        let empty = TlsConfig::new(PemSource::pem("not pem"));
        assert!(client_config(&empty).unwrap_err().0.contains("no certificate"));
        // Found through an I/O error, as the runtimes' connectors carry it.
        let io: io::Error = TlsSetupError("bad key".into()).into();
        assert_eq!(tls_failure(&io).as_deref(), Some("bad key"));
        let other = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_failure(&other), None);
        // A peer's alert after the handshake, as h2 passes it on (text only).
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let relayed = io::Error::new(io::ErrorKind::InvalidData, alert.to_string());
        assert!(tls_failure(&relayed).is_some_and(|m| m.contains("CertificateRequired")));
    }

    #[test]
    fn server_names_come_from_the_host_or_the_override() {
        let tls = TlsConfig::new(PemSource::pem(""));
        assert!(matches!(server_name(&tls, "127.0.0.1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name(&tls, "[::1]"), Ok(ServerName::IpAddress(_))));
        let named = tls.server_name("tikv.cluster");
        let name = server_name(&named, "127.0.0.1").unwrap();
        assert_eq!(name.to_str(), "tikv.cluster");
    }
}
