//! Mutual TLS: makes a CA, a server and a client certificate, serves an
//! embedded simulated cluster over TLS with them (PD and stores, client
//! certificates required), and runs a raw and a transactional quickstart
//! against it; then shows a client without TLS configured being refused.
//!
//! `cargo run -p tikv-tokio --example tls`

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::tls::ServerTls;
use tikv_sim::{Cluster, ClusterConfig};
use tikv_tokio::{Config, Error, PemSource, RawClient, RpcError, TlsConfig, TransactionClient};

/// A certificate signed by `ca` for loopback, PEM certificate and key.
fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String), rcgen::Error> {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "example CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let (server_cert, server_key) = issue(&ca, "tikv", ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client_cert, client_key) = issue(&ca, "client", ExtendedKeyUsagePurpose::ClientAuth)?;

    let tls = ServerTls::from_pem(
        server_cert.as_bytes(),
        server_key.as_bytes(),
        Some(ca.pem().as_bytes()),
    )?;
    let cluster = Cluster::new(ClusterConfig { v1_txn: true, ..ClusterConfig::default() });
    let server =
        SimServer::start(cluster, ServerOptions { tls: Some(tls), ..Default::default() }).await?;
    let pd: Vec<String> = server.pd_addrs().iter().map(|a| format!("https://{a}")).collect();
    println!("started a TLS-served simulated cluster: PD at {}", pd.join(", "));

    let tls = TlsConfig::new(PemSource::pem(ca.pem()))
        .identity(PemSource::pem(client_cert), PemSource::pem(client_key));
    let config = Config::default().with_pd_endpoints(pd.clone()).with_tls(tls);

    let raw = RawClient::connect_with_config(config.clone()).await?;
    raw.put("hello", "over TLS").await?;
    println!("raw get: {:?}", raw.get("hello").await?);

    let txns = TransactionClient::connect_with_config(config).await?;
    let mut txn = txns.begin().await?;
    txn.put("alice", "100")?;
    println!("transaction committed at {}", txn.commit().await?);

    match RawClient::connect(pd).await {
        Err(Error::Rpc(RpcError::Tls(why))) => println!("without TLS configured: {why}"),
        other => return Err(format!("expected a TLS refusal, got {other:?}").into()),
    }
    server.shutdown().await;
    Ok(())
}
