//! Shared by the transaction examples: connect to `--pd HOST:PORT`, or start
//! an embedded simulated cluster (API V1, transactional data, three regions).

use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig};

/// PD endpoints to use, and the embedded server to keep alive (if any).
pub(crate) async fn cluster() -> Result<(Vec<String>, Option<SimServer>), Box<dyn std::error::Error>>
{
    let mut args = std::env::args().skip(1);
    let mut pd = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pd" => pd.push(args.next().ok_or("--pd needs HOST:PORT")?),
            other => {
                return Err(
                    format!("unknown argument {other:?}; usage: [--pd HOST:PORT]...").into()
                );
            }
        }
    }
    if !pd.is_empty() {
        return Ok((pd, None));
    }
    let cluster = Cluster::new(ClusterConfig {
        v1_txn: true,
        split_keys: vec![b"g".to_vec(), b"n".to_vec()],
        ..ClusterConfig::default()
    });
    let server = SimServer::start(cluster, ServerOptions::default()).await?;
    let pd = server.pd_addrs();
    println!("started a simulated cluster: PD at {}", pd.join(", "));
    Ok((pd, Some(server)))
}
