//! `tikv-sim`: a simulated TiKV cluster served over gRPC.
//!
//! ```text
//! tikv-sim --pd 127.0.0.1:2379 [--pd ADDR ...] [--stores 3] [--regions N]
//!          [--api-version 1|2] [--enable-ttl] [--store-base-port PORT] [--cluster-id ID] [--seed S]
//!          [--region-error-rate F] [--region-error-kinds K,K] [--tso-latency-us US]
//!          [--tls-cert FILE --tls-key FILE [--tls-ca FILE]]
//! ```
//!
//! Each `--pd` adds one PD member (the first is the leader). Store ports are
//! ephemeral unless `--store-base-port` is given (store `i` listens on
//! `PORT + i - 1`). `--regions N` pre-splits the raw key space into `N`
//! regions at evenly spaced first bytes (after the `r\0\0\0` keyspace prefix
//! in API V2). An API V1 cluster serves raw and transactional keys at once,
//! as TiKV does: its region boundaries are memcomparable-encoded
//! ([`ClusterConfig::v1_txn`]), as PD's own splits make them and as
//! client-go's txn mode decodes them; raw keys are compared with them as
//! sent. `--txn` is accepted and changes nothing. `--enable-ttl` is TiKV's
//! `storage.enable-ttl` (API V1 only, [`ClusterConfig::enable_ttl`]): raw
//! writes may carry a TTL, transactional commands are refused. A port of 0
//! picks a free one. Prints the addresses and serves until Ctrl-C. Each
//! `stats` line on stdin is answered on stdout with
//! `stats streams=S messages=M entries=E kv_unary=U pd_unary=P locks=L`: the
//! stores' `BatchCommands` traffic so far (the benchmark's average batch
//! size), the unary requests served, and the keys holding a lock now (a
//! benchmark waits for a transaction's background resolution with it).
//! Stdin also takes faults by store: `latency STORE MS` (that store's gRPC
//! face answers every request `MS` later, [`Cluster::set_store_latency`];
//! 0 ends it), `black-hole STORE on|off` (it takes connections and
//! requests but answers nothing, [`Cluster::set_store_black_hole`]),
//! `read-wait STORE MS` (its read pool's estimated wait: reads whose
//! busy threshold is below it are refused with `ServerIsBusy`,
//! [`Cluster::set_store_read_wait`]; 0 ends it), answered `latency ok` /
//! `black-hole ok` / `read-wait ok` or `store command refused: WHY`;
//! and `leaders`, answered `leaders REGION:STORE ...`. `--region-error-rate F` answers a fraction
//! `F` of TiKV requests with a random region error
//! ([`Cluster::set_region_error_rate`], benchmark B9) of the kinds listed
//! by `--region-error-kinds` (`not-leader`, `server-is-busy`,
//! `epoch-not-match`; default all three). `--tso-latency-us US` holds each
//! TSO answer back by `US` microseconds (`ServerOptions::tso_latency`,
//! benchmark B8), pipelined requests overlapping. `--tls-cert` and
//! `--tls-key` (PEM) serve TLS on every PD and store listener (PD members
//! then advertise `https://` URLs), as TiKV's and PD's `security.cert-path`
//! and `key-path`; `--tls-ca` also requires clients to present a
//! certificate chaining to that CA (mutual TLS, TiKV's `ca-path`).
//!
//! ```text
//! tikv-sim --join-pd HOST:PORT [--stores 3] [--regions N] [--api-version 1|2] [--enable-ttl]
//!          [--store-version V] [--seed S] [--region-error-rate F] [--region-error-kinds K,K]
//! ```
//!
//! With `--join-pd` the simulator serves no PD of its own: its stores join
//! the real PD at that address as TiKV stores do (`tikv_sim::join`:
//! bootstrap or join, `PutStore` with version `--store-version`, default
//! 8.5.0, heartbeats, PD's operators carried out), and clients connect to
//! that PD. Every store also serves gRPC health and a status address
//! (TiKV's `status-addr`: `/status`, `/config`), printed as `status ID:
//! ADDR` and reported to PD. `--regions N` then splits through PD (`AskBatchSplit`) after
//! joining. Stdin also takes `split HEXKEY`: a store-initiated split at a
//! key in region key space, answered with `split ok IDS` or `split refused
//! WHY`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::ExitCode;

use tikv_sim::join::{JoinOptions, JoinedCluster};
use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::tls::ServerTls;
use tikv_sim::{ApiVersion, Cluster, ClusterConfig, RandomRegionError};

const USAGE: &str =
    "usage: tikv-sim --pd HOST:PORT [--pd HOST:PORT ...] [--stores N] [--regions N] \
[--api-version 1|2] [--enable-ttl] [--store-base-port PORT] [--cluster-id ID] [--seed S] \
[--region-error-rate F] [--region-error-kinds not-leader,server-is-busy,epoch-not-match] \
[--tso-latency-us US] [--tls-cert FILE --tls-key FILE [--tls-ca FILE]]
       tikv-sim --join-pd HOST:PORT [--stores N] [--regions N] [--api-version 1|2] [--enable-ttl] \
[--store-version V] [--seed S] [--region-error-rate F] [--region-error-kinds K,K]";

struct Args {
    pd: Vec<SocketAddr>,
    /// A real PD to join instead of serving one.
    join_pd: Option<String>,
    store_version: Option<String>,
    stores: usize,
    regions: usize,
    api: ApiVersion,
    /// TiKV's `storage.enable-ttl` (API V1).
    enable_ttl: bool,
    store_base_port: Option<u16>,
    cluster_id: Option<u64>,
    seed: u64,
    /// Region errors per mille of TiKV requests.
    region_error_per_mille: u32,
    region_error_kinds: Vec<RandomRegionError>,
    tso_latency_us: u64,
    /// The servers' certificate, key and client CA (mutual TLS), PEM files.
    tls_cert: Option<std::path::PathBuf>,
    tls_key: Option<std::path::PathBuf>,
    tls_ca: Option<std::path::PathBuf>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        pd: Vec::new(),
        join_pd: None,
        store_version: None,
        stores: 3,
        regions: 1,
        api: ApiVersion::V1,
        enable_ttl: false,
        store_base_port: None,
        cluster_id: None,
        seed: 0,
        region_error_per_mille: 0,
        region_error_kinds: vec![
            RandomRegionError::NotLeader,
            RandomRegionError::ServerIsBusy,
            RandomRegionError::EpochNotMatch,
        ],
        tso_latency_us: 0,
        tls_cert: None,
        tls_key: None,
        tls_ca: None,
    };
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        // Every V1 cluster serves both key spaces; the flag stays accepted.
        if flag == "--txn" {
            continue;
        }
        if flag == "--enable-ttl" {
            args.enable_ttl = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |what: &str| format!("{flag}: {what} expected, got {value:?}\n{USAGE}");
        match flag.as_str() {
            "--pd" => args.pd.push(value.parse().map_err(|_| bad("HOST:PORT"))?),
            "--join-pd" => {
                if !value.contains(':') {
                    return Err(bad("HOST:PORT"));
                }
                args.join_pd = Some(value)
            }
            "--store-version" => args.store_version = Some(value),
            "--stores" => args.stores = value.parse().map_err(|_| bad("a number"))?,
            "--regions" => args.regions = value.parse().map_err(|_| bad("a number"))?,
            "--api-version" => {
                args.api = match value.as_str() {
                    "1" => ApiVersion::V1,
                    "2" => ApiVersion::V2,
                    _ => return Err(bad("1 or 2")),
                }
            }
            "--store-base-port" => {
                args.store_base_port = Some(value.parse().map_err(|_| bad("a port"))?)
            }
            "--cluster-id" => args.cluster_id = Some(value.parse().map_err(|_| bad("a number"))?),
            "--seed" => args.seed = value.parse().map_err(|_| bad("a number"))?,
            "--region-error-rate" => {
                let rate: f64 = value.parse().map_err(|_| bad("a fraction"))?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err(bad("a fraction in [0, 1]"));
                }
                args.region_error_per_mille = (rate * 1000.0).round() as u32;
            }
            "--region-error-kinds" => {
                args.region_error_kinds = value
                    .split(',')
                    .map(|k| match k {
                        "not-leader" => Ok(RandomRegionError::NotLeader),
                        "server-is-busy" => Ok(RandomRegionError::ServerIsBusy),
                        "epoch-not-match" => Ok(RandomRegionError::EpochNotMatch),
                        _ => Err(bad("not-leader, server-is-busy or epoch-not-match")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--tso-latency-us" => {
                args.tso_latency_us = value.parse().map_err(|_| bad("microseconds"))?
            }
            "--tls-cert" => args.tls_cert = Some(value.into()),
            "--tls-key" => args.tls_key = Some(value.into()),
            "--tls-ca" => args.tls_ca = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if args.join_pd.is_some() {
        let served_pd_only = [
            ("--pd", !args.pd.is_empty()),
            ("--store-base-port", args.store_base_port.is_some()),
            ("--cluster-id", args.cluster_id.is_some()),
            ("--tso-latency-us", args.tso_latency_us != 0),
            ("--tls-cert", args.tls_cert.is_some()),
            ("--tls-key", args.tls_key.is_some()),
            ("--tls-ca", args.tls_ca.is_some()),
        ];
        if let Some((flag, _)) = served_pd_only.iter().find(|(_, set)| *set) {
            return Err(format!("{flag} cannot be used with --join-pd\n{USAGE}"));
        }
    } else if args.pd.is_empty() {
        return Err(format!("--pd or --join-pd is required\n{USAGE}"));
    } else if args.store_version.is_some() {
        return Err(format!("--store-version needs --join-pd\n{USAGE}"));
    }
    if args.enable_ttl && args.api != ApiVersion::V1 {
        return Err(format!("--enable-ttl is for API V1 (API V2 always has TTL)\n{USAGE}"));
    }
    if args.tls_cert.is_some() != args.tls_key.is_some() {
        return Err(format!("--tls-cert and --tls-key go together\n{USAGE}"));
    }
    if args.tls_ca.is_some() && args.tls_cert.is_none() {
        return Err(format!("--tls-ca needs --tls-cert and --tls-key\n{USAGE}"));
    }
    if args.stores == 0 {
        return Err(format!("--stores must be at least 1\n{USAGE}"));
    }
    Ok(args)
}

/// `n - 1` split keys spreading raw keys over `n` regions by first byte.
fn split_keys(n: usize, api: ApiVersion) -> Vec<Vec<u8>> {
    let n = n.clamp(1, 256);
    (1..n)
        .map(|i| {
            let byte = (i * 256 / n) as u8;
            match api {
                ApiVersion::V1 => vec![byte],
                ApiVersion::V2 => vec![b'r', 0, 0, 0, byte],
            }
        })
        .collect()
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    if let Some(pd) = args.join_pd.clone() {
        return run_joined(args, pd);
    }
    let mut cfg = ClusterConfig {
        stores: args.stores,
        api_version: args.api,
        split_keys: split_keys(args.regions, args.api),
        seed: args.seed,
        pd_members: args.pd.len(),
        v1_txn: true,
        enable_ttl: args.enable_ttl,
        ..ClusterConfig::default()
    };
    if let Some(id) = args.cluster_id {
        cfg.cluster_id = id;
    }
    // Outside the deterministic model: anchor TSO and TTL time at the real
    // Unix time, so clients comparing TSO with their clock see sane values.
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        cfg.tso_base_ms = u64::try_from(d.as_millis()).unwrap_or(cfg.tso_base_ms);
    }
    let cluster = Cluster::new(cfg);
    cluster.set_region_error_rate(args.region_error_per_mille, &args.region_error_kinds);
    let mut opts = ServerOptions {
        pd_addrs: args.pd.clone(),
        tso_latency: std::time::Duration::from_micros(args.tso_latency_us),
        ..ServerOptions::default()
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        match ServerTls::from_files(cert, key, args.tls_ca.as_deref()) {
            Ok(tls) => opts.tls = Some(tls),
            Err(e) => {
                eprintln!("TLS: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(base) = args.store_base_port {
        for (i, id) in cluster.store_ids().into_iter().enumerate() {
            let port = base.saturating_add(i as u16);
            opts.store_addrs.insert(id, SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let server = match SimServer::start(cluster.clone(), opts).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let cfg = cluster.config();
        println!("tikv-sim: cluster id {}, api {:?}", cfg.cluster_id, cfg.api_version);
        for (i, addr) in server.pd_addrs().iter().enumerate() {
            println!("pd {i}: {addr}");
        }
        for id in cluster.store_ids() {
            if let Some(addr) = server.store_addr(id).await {
                println!("store {id}: {addr}");
            }
            if let Some(addr) = server.store_status_addr(id).await {
                println!("status {id}: {addr}");
            }
        }
        println!("regions: {}", cluster.regions().len());
        println!("ready");
        // `stats` lines on stdin ask for the streams' traffic (the
        // benchmark's average batch size).
        let mut lines = stdin_lines();
        loop {
            tokio::select! {
                signal = tokio::signal::ctrl_c() => {
                    if let Err(e) = signal {
                        eprintln!("cannot wait for Ctrl-C: {e}");
                    }
                    break;
                }
                Some(line) = lines.recv() => {
                    if let Some(command) = parse_store_command(&line) {
                        println!("{}", run_store_command(&cluster, command));
                        continue;
                    }
                    if line != "stats" {
                        continue;
                    }
                    let s = server.batch_stats();
                    println!(
                        "stats streams={} messages={} entries={} kv_unary={} pd_unary={} locks={}",
                        s.streams,
                        s.messages,
                        s.requests,
                        s.unary,
                        server.pd_unary_calls(),
                        cluster.lock_count()
                    );
                }
            }
        }
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// A fault or topology question given on stdin (module docs).
#[derive(Debug, PartialEq, Eq)]
enum StoreCommand {
    /// `latency STORE MS`: [`Cluster::set_store_latency`].
    Latency(u64, std::time::Duration),
    /// `black-hole STORE on|off`: [`Cluster::set_store_black_hole`].
    BlackHole(u64, bool),
    /// `read-wait STORE MS`: [`Cluster::set_store_read_wait`].
    ReadWait(u64, std::time::Duration),
    /// `leaders`: each region's leader store.
    Leaders,
    /// A command with bad arguments, and why.
    Bad(String),
}

/// `None` for lines that are not a store command.
fn parse_store_command(line: &str) -> Option<StoreCommand> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let store = |w: &str| w.parse::<u64>().map_err(|_| format!("{w:?} is not a store id"));
    Some(match words.as_slice() {
        ["leaders"] => StoreCommand::Leaders,
        [which @ ("latency" | "read-wait"), id, ms] => match (store(id), ms.parse::<u64>()) {
            (Ok(id), Ok(ms)) => {
                let ms = std::time::Duration::from_millis(ms);
                if *which == "latency" {
                    StoreCommand::Latency(id, ms)
                } else {
                    StoreCommand::ReadWait(id, ms)
                }
            }
            (Err(e), _) => StoreCommand::Bad(e),
            (_, Err(_)) => StoreCommand::Bad(format!("{ms:?} is not milliseconds")),
        },
        ["black-hole", id, on @ ("on" | "off")] => match store(id) {
            Ok(id) => StoreCommand::BlackHole(id, *on == "on"),
            Err(e) => StoreCommand::Bad(e),
        },
        ["latency" | "black-hole" | "read-wait", ..] => StoreCommand::Bad(
            "usage: latency STORE MS | black-hole STORE on|off | read-wait STORE MS".into(),
        ),
        _ => return None,
    })
}

/// Carries out a store command; the line to print.
fn run_store_command(cluster: &Cluster, command: StoreCommand) -> String {
    let known = |id: u64| cluster.store_ids().contains(&id);
    match command {
        StoreCommand::Leaders => {
            let pairs: Vec<String> = cluster
                .regions()
                .iter()
                .map(|r| {
                    let store = cluster.leader_of(r.id).map_or(0, |p| p.store_id);
                    format!("{}:{store}", r.id)
                })
                .collect();
            format!("leaders {}", pairs.join(" "))
        }
        StoreCommand::Latency(id, latency) if known(id) => {
            cluster.set_store_latency(id, latency);
            "latency ok".into()
        }
        StoreCommand::BlackHole(id, on) if known(id) => {
            cluster.set_store_black_hole(id, on);
            "black-hole ok".into()
        }
        StoreCommand::ReadWait(id, wait) if known(id) => {
            cluster.set_store_read_wait(id, wait);
            "read-wait ok".into()
        }
        StoreCommand::Latency(id, _)
        | StoreCommand::BlackHole(id, _)
        | StoreCommand::ReadWait(id, _) => {
            format!("store command refused: no store {id}")
        }
        StoreCommand::Bad(why) => format!("store command refused: {why}"),
    }
}

/// Reads stdin lines on a thread of their own and hands them over; stdin
/// closing changes nothing.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(l.trim().to_owned()).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    rx
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// `--join-pd`: the stores join a real PD (`tikv_sim::join`).
fn run_joined(args: Args, pd: String) -> ExitCode {
    let cfg = ClusterConfig {
        api_version: args.api,
        seed: args.seed,
        v1_txn: true,
        enable_ttl: args.enable_ttl,
        ..ClusterConfig::default()
    };
    let mut opts = JoinOptions::new(pd, args.stores);
    if let Some(v) = args.store_version.clone() {
        opts.store_version = v;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let joined = match JoinedCluster::start(cfg, opts).await {
            Ok(j) => j,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let cluster = joined.cluster().clone();
        cluster.set_region_error_rate(args.region_error_per_mille, &args.region_error_kinds);
        let cfg = cluster.config();
        for key in split_keys(args.regions, args.api) {
            let region_key = if cfg.api_version == ApiVersion::V1 && cfg.v1_txn {
                tikv_core::key::memcomparable::encode_bytes(&key)
            } else {
                cluster.region_key(&key)
            };
            if let Err(e) = joined.split(&region_key).await {
                eprintln!("--regions: split at {key:?}: {e}");
                return ExitCode::FAILURE;
            }
        }
        println!(
            "tikv-sim: joined PD, cluster id {}, api {:?}",
            joined.cluster_id(),
            cfg.api_version
        );
        for id in cluster.store_ids() {
            if let Some(addr) = joined.server().store_addr(id).await {
                println!("store {id}: {addr}");
            }
            if let Some(addr) = joined.server().store_status_addr(id).await {
                println!("status {id}: {addr}");
            }
        }
        println!("regions: {}", cluster.regions().len());
        println!("ready");
        let mut lines = stdin_lines();
        loop {
            tokio::select! {
                signal = tokio::signal::ctrl_c() => {
                    if let Err(e) = signal {
                        eprintln!("cannot wait for Ctrl-C: {e}");
                    }
                    break;
                }
                Some(line) = lines.recv() => {
                    if line == "stats" {
                        let s = joined.server().batch_stats();
                        println!(
                            "stats streams={} messages={} entries={} pd_unary=0",
                            s.streams, s.messages, s.requests
                        );
                    } else if let Some(hex) = line.strip_prefix("split ") {
                        match parse_hex(hex.trim()) {
                            None => println!("split refused: not a hex key"),
                            Some(key) => match joined.split(&key).await {
                                Ok(regions) => {
                                    let ids: Vec<String> =
                                        regions.iter().map(|r| r.id.to_string()).collect();
                                    println!("split ok {}", ids.join(","));
                                }
                                Err(e) => println!("split refused: {e}"),
                            },
                        }
                    }
                }
            }
        }
        joined.shutdown().await;
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        parse_args(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn parses_flags() {
        let a = parse(
            "--pd 127.0.0.1:2379 --stores 5 --regions 4 --api-version 2 --store-base-port 20160",
        )
        .unwrap();
        assert_eq!(a.pd, vec!["127.0.0.1:2379".parse::<SocketAddr>().unwrap()]);
        assert_eq!(a.stores, 5);
        assert_eq!(a.regions, 4);
        assert_eq!(a.api, ApiVersion::V2);
        assert_eq!(a.store_base_port, Some(20160));
        assert!(!a.enable_ttl);
        assert!(parse("--txn --pd 127.0.0.1:0").is_ok());
        assert!(parse("--enable-ttl --pd 127.0.0.1:0").unwrap().enable_ttl);
        assert!(parse("--enable-ttl --api-version 2 --pd 127.0.0.1:0").is_err());
        let faulty = parse("--pd 127.0.0.1:0 --region-error-rate 0.1").unwrap();
        assert_eq!(faulty.region_error_per_mille, 100);
        assert!(parse("--pd 127.0.0.1:0 --region-error-rate 2").is_err());
        let kinds =
            parse("--pd 127.0.0.1:0 --region-error-kinds not-leader,epoch-not-match").unwrap();
        assert_eq!(
            kinds.region_error_kinds,
            vec![RandomRegionError::NotLeader, RandomRegionError::EpochNotMatch]
        );
        assert!(parse("--pd 127.0.0.1:0 --region-error-kinds busy").is_err());
        assert_eq!(parse("--pd 127.0.0.1:0 --tso-latency-us 500").unwrap().tso_latency_us, 500);
        assert!(parse("--pd 127.0.0.1:0 --tso-latency-us soon").is_err());
        assert!(parse("--stores 3").is_err());
        let joined = parse("--join-pd 127.0.0.1:2379 --stores 3 --store-version 9.0.0").unwrap();
        assert_eq!(joined.join_pd.as_deref(), Some("127.0.0.1:2379"));
        assert_eq!(joined.store_version.as_deref(), Some("9.0.0"));
        assert!(parse("--join-pd 127.0.0.1:2379 --pd 127.0.0.1:2380").is_err());
        assert!(parse("--join-pd 127.0.0.1:2379 --cluster-id 5").is_err());
        assert!(parse("--join-pd localhost").is_err());
        assert!(parse("--pd 127.0.0.1:1 --store-version 9.0.0").is_err());
        assert!(parse("--pd 127.0.0.1:1 --api-version 3").is_err());
        assert!(parse("--pd 127.0.0.1:1 --bogus 1").is_err());
        assert!(parse("--pd").is_err());
        let tls =
            parse("--pd 127.0.0.1:1 --tls-cert c.pem --tls-key k.pem --tls-ca ca.pem").unwrap();
        assert_eq!(tls.tls_ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert!(parse("--pd 127.0.0.1:1 --tls-cert c.pem").is_err());
        assert!(parse("--pd 127.0.0.1:1 --tls-ca ca.pem").is_err());
        assert!(parse("--join-pd 127.0.0.1:2379 --tls-cert c.pem --tls-key k.pem").is_err());
    }

    #[test]
    fn store_commands_parse_and_run() {
        use std::time::Duration;
        assert_eq!(parse_store_command("stats"), None);
        assert_eq!(parse_store_command("leaders"), Some(StoreCommand::Leaders));
        assert_eq!(
            parse_store_command("latency 2 20"),
            Some(StoreCommand::Latency(2, Duration::from_millis(20)))
        );
        assert_eq!(parse_store_command("black-hole 3 on"), Some(StoreCommand::BlackHole(3, true)));
        assert_eq!(
            parse_store_command("black-hole 3 off"),
            Some(StoreCommand::BlackHole(3, false))
        );
        assert_eq!(
            parse_store_command("read-wait 1 300"),
            Some(StoreCommand::ReadWait(1, Duration::from_millis(300)))
        );
        for bad in
            ["latency x 20", "latency 2 soon", "black-hole 3 maybe", "latency 2", "read-wait 1"]
        {
            assert!(matches!(parse_store_command(bad), Some(StoreCommand::Bad(_))), "{bad}");
        }
        let cluster =
            Cluster::new(ClusterConfig { split_keys: vec![vec![128]], ..ClusterConfig::default() });
        let run = |line: &str| run_store_command(&cluster, parse_store_command(line).unwrap());
        assert_eq!(run("latency 2 20"), "latency ok");
        assert_eq!(cluster.store_latency(2), Duration::from_millis(20));
        assert_eq!(run("black-hole 3 on"), "black-hole ok");
        assert!(cluster.is_store_black_holed(3));
        assert_eq!(run("black-hole 3 off"), "black-hole ok");
        assert!(!cluster.is_store_black_holed(3));
        assert_eq!(run("read-wait 1 300"), "read-wait ok");
        assert_eq!(cluster.store_read_wait(1), Duration::from_millis(300));
        assert_eq!(run("read-wait 1 0"), "read-wait ok");
        assert_eq!(cluster.store_read_wait(1), Duration::ZERO);
        assert_eq!(run("latency 9 1"), "store command refused: no store 9");
        assert_eq!(run("read-wait 9 1"), "store command refused: no store 9");
        let leaders = run("leaders");
        let pairs: Vec<&str> = leaders.strip_prefix("leaders ").unwrap().split(' ').collect();
        assert_eq!(pairs.len(), 2);
        for (pair, region) in pairs.iter().zip(cluster.regions()) {
            let store = cluster.leader_of(region.id).unwrap().store_id;
            assert_eq!(*pair, format!("{}:{store}", region.id));
        }
    }

    #[test]
    fn hex_keys_parse() {
        assert_eq!(parse_hex("00ff7a"), Some(vec![0, 255, 0x7a]));
        assert_eq!(parse_hex("0"), None);
        assert_eq!(parse_hex("zz"), None);
    }

    #[test]
    fn split_keys_spread_regions() {
        assert_eq!(split_keys(1, ApiVersion::V1), Vec::<Vec<u8>>::new());
        assert_eq!(split_keys(4, ApiVersion::V1), vec![vec![64], vec![128], vec![192]]);
        assert_eq!(split_keys(2, ApiVersion::V2), vec![vec![b'r', 0, 0, 0, 128]]);
    }
}
