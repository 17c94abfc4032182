//! The TLS suite: the client over TLS and mutual TLS against a simulator
//! serving TLS on PD and every store, with certificates made per test
//! ([`Pki`], rcgen). A raw put/get and a transactional commit work end to
//! end; a client without a certificate, one trusting another CA and one
//! dialling `https://` without TLS configured are refused quickly with
//! `RpcError::Tls`; a client certificate rotated on disk is used by the
//! next connection. [`tls_suite!`](crate::tls_suite) stamps the tests out
//! as `#[test]`s for one [`Harness`]; TLS runs on the in-process bed only
//! (the real PD of the other bed is started without certificates).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tikv_core::config::{PemSource, TlsConfig};
use tikv_driver::{Config, Error, RpcError};
use tikv_sim::ClusterConfig;
use tikv_sim::tls::ServerTls;

use crate::harness::{Harness, SimHandle};

/// The client types under test.
type RawClient<H> = tikv_driver::RawClient<<H as Harness>::Platform>;
type TransactionClient<H> = tikv_driver::TransactionClient<<H as Harness>::Platform>;

/// Stamps out the TLS suite as `#[test]` functions running on the given
/// [`Harness`](crate::Harness), on the in-process bed. Every test of
/// [`tls`](crate::tls) is listed here once.
///
/// ```text
/// tikv_tests::tls_suite!(tikv_tests::harness::TokioHarness);
/// ```
#[macro_export]
macro_rules! tls_suite {
    (@each $harness:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                <$harness as $crate::Harness>::block_on($crate::tls::$name::<$harness>());
            }
        )*
    };
    ($harness:ty) => {
        $crate::tls_suite!(@each $harness;
            raw_and_txn_work_over_mutual_tls,
            mtls_refuses_a_client_without_a_certificate,
            a_server_from_another_ca_is_refused_quickly,
            https_without_tls_configured_is_refused_at_once,
            a_rotated_client_certificate_is_used_by_new_connections,
        );
    };
}

/// A certificate and its key, PEM, and the certificate's DER.
#[derive(Debug)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert: String,
    /// Its private key, PEM.
    pub key: String,
    /// The certificate, DER (as the server records it).
    pub der: Vec<u8>,
}

/// A certificate authority made for one test.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Pki { ca: CertifiedIssuer::self_signed(params, key).expect("CA certificate") }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for loopback (`127.0.0.1`, `localhost`).
    pub fn server(&self) -> Issued {
        self.issue("tikv-sim", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate named `name`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Issued {
        let sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("certificate");
        Issued { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// The server side: `self`'s server certificate, and with `mutual`
    /// client certificates required to chain to `self`.
    pub fn server_tls(&self, mutual: bool) -> ServerTls {
        let server = self.server();
        let ca = self.ca_pem();
        let client_ca = mutual.then_some(ca.as_bytes());
        ServerTls::from_pem(server.cert.as_bytes(), server.key.as_bytes(), client_ca)
            .expect("server TLS")
    }
}

/// A client config for `server`'s PD over TLS with `tls`.
fn config(server: &SimHandle, tls: TlsConfig) -> Config {
    Config::default().with_pd_endpoints(server.pd_addrs()).with_tls(tls)
}

/// Expects `connect` to be refused with `RpcError::Tls` within `within`.
async fn expect_tls_refusal<T: std::fmt::Debug>(
    connect: impl std::future::Future<Output = Result<T, Error>>,
    within: Duration,
) -> String {
    let started = Instant::now();
    let result = connect.await;
    let took = started.elapsed();
    match result {
        Err(Error::Rpc(RpcError::Tls(why))) => {
            assert!(took < within, "refused only after {took:?}: {why}");
            why
        }
        other => panic!("expected a TLS refusal, got {other:?} after {took:?}"),
    }
}

/// Raw put/get and a transactional commit over mutual TLS, PD addressed
/// as `https://` and as plain `host:port`; the stores (whose addresses
/// come from PD) are dialled with TLS too. Certificates from memory.
pub async fn raw_and_txn_work_over_mutual_tls<H: Harness>() {
    let pki = Pki::new("test-ca");
    let server_tls = pki.server_tls(true);
    let server = SimHandle::start_tls(ClusterConfig::default(), server_tls.clone()).await;
    let client_cert = pki.client("client");
    let tls = TlsConfig::new(PemSource::pem(pki.ca_pem()))
        .identity(PemSource::pem(client_cert.cert.clone()), PemSource::pem(client_cert.key));

    let https: Vec<String> = server.pd_addrs().iter().map(|a| format!("https://{a}")).collect();
    let raw_config = Config::default().with_pd_endpoints(https).with_tls(tls.clone());
    let raw = RawClient::<H>::connect_with_config(raw_config).await.expect("raw connect");
    raw.put("tls-raw", "v1").await.expect("raw put");
    assert_eq!(raw.get("tls-raw").await.expect("raw get").as_deref(), Some(&b"v1"[..]));

    let txns = TransactionClient::<H>::connect_with_config(config(&server, tls))
        .await
        .expect("txn connect");
    let mut txn = txns.begin().await.expect("begin");
    txn.put("tls-txn", "v2").expect("buffer put");
    let commit_ts = txn.commit().await.expect("commit");
    let read_ts = txns.current_timestamp().await.expect("ts");
    assert!(read_ts > commit_ts, "{read_ts} after {commit_ts}");
    let snapshot = txns.snapshot(read_ts);
    assert_eq!(snapshot.get("tls-txn").await.expect("read").as_deref(), Some(&b"v2"[..]));

    // Every connection presented the client's certificate.
    let seen = server_tls.client_certificates();
    assert!(!seen.is_empty(), "no TLS connection was accepted");
    assert!(seen.iter().all(|der| *der == client_cert.der), "another certificate was presented");
    server.shutdown().await;
}

/// Mutual TLS: a client that trusts the server but has no certificate of
/// its own is refused (TiKV's and PD's `ca-path` rule), with a typed error.
pub async fn mtls_refuses_a_client_without_a_certificate<H: Harness>() {
    let pki = Pki::new("test-ca");
    let server = SimHandle::start_tls(ClusterConfig::default(), pki.server_tls(true)).await;
    let tls = TlsConfig::new(PemSource::pem(pki.ca_pem()));
    let why = expect_tls_refusal(
        RawClient::<H>::connect_with_config(config(&server, tls)),
        Duration::from_secs(5),
    )
    .await;
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    server.shutdown().await;
}

/// A server whose certificate chains to a CA the client does not trust
/// is refused at the handshake, quickly, with a typed error (not retried
/// until the PD budget runs out).
pub async fn a_server_from_another_ca_is_refused_quickly<H: Harness>() {
    let (pki, other) = (Pki::new("test-ca"), Pki::new("other-ca"));
    let server = SimHandle::start_tls(ClusterConfig::default(), pki.server_tls(false)).await;
    let tls = TlsConfig::new(PemSource::pem(other.ca_pem()));
    let why = expect_tls_refusal(
        RawClient::<H>::connect_with_config(config(&server, tls)),
        Duration::from_secs(5),
    )
    .await;
    assert!(why.contains("UnknownIssuer") || why.contains("issuer"), "{why}");
    server.shutdown().await;
}

/// Without TLS configured, an `https://` PD address is refused before
/// anything is sent (speaking cleartext to a TLS port fails obscurely).
pub async fn https_without_tls_configured_is_refused_at_once<H: Harness>() {
    let pki = Pki::new("test-ca");
    let server = SimHandle::start_tls(ClusterConfig::default(), pki.server_tls(false)).await;
    let https: Vec<String> = server.pd_addrs().iter().map(|a| format!("https://{a}")).collect();
    let why = expect_tls_refusal(RawClient::<H>::connect(https), Duration::from_secs(1)).await;
    assert!(why.contains("no TLS configured"), "{why}");
    server.shutdown().await;
}

/// A directory removed on drop, for certificate files.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let unique = format!(
            "tikv-tls-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        // Written beside and renamed, as certificate rotators do, so a
        // handshake never reads half a file.
        let partial = self.0.join(format!("{name}.partial"));
        std::fs::write(&partial, text).expect("write");
        std::fs::rename(&partial, &path).expect("rename");
        path
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Certificates come from files, re-read for each new connection: a
/// client certificate rotated on disk during a workload is presented by
/// the client's next connection (client-go reloads on each handshake),
/// without a new client.
pub async fn a_rotated_client_certificate_is_used_by_new_connections<H: Harness>() {
    let pki = Pki::new("test-ca");
    let server_tls = pki.server_tls(true);
    // One store: restarting it makes the client dial it again.
    let cluster = ClusterConfig { stores: 1, ..ClusterConfig::default() };
    let server = SimHandle::start_tls(cluster, server_tls.clone()).await;
    let dir = TempDir::new("rotate");
    let (first, second) = (pki.client("client-1"), pki.client("client-2"));
    let ca = dir.write("ca.pem", &pki.ca_pem());
    let cert = dir.write("client.pem", &first.cert);
    let key = dir.write("client-key.pem", &first.key);
    let tls =
        TlsConfig::new(PemSource::file(ca)).identity(PemSource::file(cert), PemSource::file(key));
    let client = RawClient::<H>::connect_with_config(config(&server, tls)).await.expect("connect");
    for i in 0..20 {
        client.put(format!("rotate-{i}"), "before").await.expect("put before rotation");
    }
    assert!(server_tls.client_certificates().iter().all(|der| *der == first.der));

    // Rotate on disk; the open connections keep their session.
    dir.write("client.pem", &second.cert);
    dir.write("client-key.pem", &second.key);
    client.put("rotate-0", "rotated").await.expect("put on the open connections");
    let before_restart = server_tls.client_certificates().len();

    // The store restarts: the client's next connection to it must
    // present the new certificate, and the workload goes on.
    let store = server.cluster().store_ids()[0];
    server.stop_store(store).await.expect("stop store");
    server.start_store(store).await.expect("start store");
    for i in 0..20 {
        client.put(format!("rotate-{i}"), "after").await.expect("put after rotation");
    }
    assert_eq!(client.get("rotate-7").await.expect("get").as_deref(), Some(&b"after"[..]));
    let seen = server_tls.client_certificates();
    let new = &seen[before_restart..];
    assert!(!new.is_empty(), "the client did not reconnect");
    assert!(new.iter().all(|der| *der == second.der), "a new connection used the old certificate");
    assert!(dir.path().exists());
    server.shutdown().await;
}
