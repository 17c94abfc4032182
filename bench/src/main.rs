//! `tikv-bench`: raw get/put throughput, latency and client CPU on loopback.
//!
//! ```text
//! cargo build --release -p tikv-sim -p tikv-bench
//! target/release/tikv-bench [--secs 3] [--conc 1,64,256] [--ops get,put]
//!                           [--modes batch,unary,floor-stream,floor-unary]
//!                           [--key-len 16] [--value-len 64]
//!                           [--client-go PATH] [--tikv-client PATH]
//! ```
//!
//! Starts `tikv-sim` (next to this binary, or `$TIKV_SIM`) as a separate
//! process with one store and one region, pinned to core 1 with `taskset`
//! when available, and re-executes itself on core 0. The client runs on a
//! one-worker tokio runtime. Modes:
//! - `batch`: our `RawClient` (region cache, request building, retry loop)
//!   over the `BatchCommands` stream;
//! - `batch-basic`: the same with client-go's `basic` policy (never wait
//!   for more requests; not in the default set);
//! - `transport`: our `GrpcTransport` alone on the stream, prebuilt
//!   requests as the floor's (no driver, no routing; not in the default set);
//! - `unary`: the same client with `TransportConfig::batch_commands(false)`;
//! - `floor-stream`: a minimal tonic client on one `BatchCommands` stream:
//!   prebuilt requests with the region context filled in, no routing, an
//!   id → oneshot map and a sender task taking whatever is queued (the
//!   transport's ceiling);
//! - `floor-unary`: prebuilt unary tonic calls;
//! - `client-go`, `tikv-client`: the peers, each in its own process
//!   (`tikv_bench::peers`; not in the default set). Their programs are
//!   found next to this binary (`peer-client-go`, `tikv-client-bench`) or
//!   given with `--client-go` / `--tikv-client`; `bench/side-by-side.sh`
//!   builds everything and runs them all.
//!
//! Each (op, concurrency, mode) runs the workload of `tikv_bench::workload`
//! for `--secs` after a short warm-up; keys are 16 bytes and values 64
//! unless `--key-len` / `--value-len` say otherwise. CPU is the client
//! process's user+system time, divided by completed operations. The
//! ratios compare each of our modes with its floor from the same run; with
//! peers in the run, a second table gives our modes' ratios to each peer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tikv_bench::peers::{PEER_MODES, PeerPlan, Peers, Row};
use tikv_bench::workload::{self, Op, Workload};
use tikv_core::config::Config;
use tikv_core::rpc::batch::BatchPolicy;
use tikv_core::rpc::{KvRequest, PdRequest, PdResponse, Request, Response, Target};
use tikv_driver::{Platform, RawClient, Runtime, Transport};
use tikv_proto::kvrpcpb::{Context, RawGetRequest, RawPutRequest};
use tikv_proto::pdpb::GetRegionRequest;
use tikv_proto::tikvpb::batch_commands_request::Request as ReqEntry;
use tikv_proto::tikvpb::batch_commands_request::request::Cmd as ReqCmd;
use tikv_proto::tikvpb::tikv_client::TikvClient;
use tikv_proto::tikvpb::{BatchCommandsRequest, BatchCommandsResponse};
use tikv_tokio::{GrpcTransport, TokioRuntime, TransportConfig};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

/// The tokio platform with every request unary.
struct Unary;

impl Platform for Unary {
    type Runtime = TokioRuntime;
    type Transport = GrpcTransport;

    fn build(config: &Config) -> Result<(TokioRuntime, GrpcTransport), tikv_core::Error> {
        let transport = GrpcTransport::new(
            TransportConfig::default()
                .connect_timeout(config.connect_timeout)
                .batch_commands(false),
        );
        Ok((TokioRuntime::new(), transport))
    }
}

/// The tokio platform with the stream but client-go's `basic` policy
/// (never wait for more requests).
struct BatchBasic;

impl Platform for BatchBasic {
    type Runtime = TokioRuntime;
    type Transport = GrpcTransport;

    fn build(config: &Config) -> Result<(TokioRuntime, GrpcTransport), tikv_core::Error> {
        let transport = GrpcTransport::new(
            TransportConfig::default()
                .connect_timeout(config.connect_timeout)
                .batch_policy(BatchPolicy::Basic),
        );
        Ok((TokioRuntime::new(), transport))
    }
}

struct Args {
    secs: f64,
    conc: Vec<usize>,
    ops: Vec<String>,
    modes: Vec<String>,
    workload: Workload,
    peer_bins: HashMap<&'static str, PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        secs: 3.0,
        conc: vec![1, 64, 256],
        ops: vec!["get".into(), "put".into()],
        modes: ["batch", "unary", "floor-stream", "floor-unary"].map(String::from).to_vec(),
        workload: Workload::default(),
        peer_bins: HashMap::new(),
    };
    // Peer programs next to this binary unless given.
    if let Ok(exe) = std::env::current_exe() {
        args.peer_bins.insert("client-go", exe.with_file_name("peer-client-go"));
        args.peer_bins.insert("tikv-client", exe.with_file_name("tikv-client-bench"));
    }
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let list = || value.split(',').map(str::to_owned).collect::<Vec<_>>();
        match flag.as_str() {
            "--secs" => args.secs = value.parse().map_err(|_| "--secs: a number")?,
            "--conc" => {
                args.conc = list()
                    .iter()
                    .map(|c| c.parse())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "--conc: numbers")?
            }
            "--ops" => args.ops = list(),
            "--modes" => args.modes = list(),
            "--key-len" => {
                args.workload.key_len = value.parse().map_err(|_| "--key-len: a number")?;
                if args.workload.key_len < Workload::MIN_KEY_LEN {
                    return Err(format!("--key-len: at least {}", Workload::MIN_KEY_LEN));
                }
            }
            "--value-len" => {
                args.workload.value_len = value.parse().map_err(|_| "--value-len: a number")?
            }
            "--client-go" => drop(args.peer_bins.insert("client-go", value.into())),
            "--tikv-client" => drop(args.peer_bins.insert("tikv-client", value.into())),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// A raw get or put through one of our clients.
fn ours<P: Platform>(client: &RawClient<P>, is_get: bool, w: Workload) -> Op
where
    RawClient<P>: Clone,
{
    let (client, value) = (client.clone(), w.value());
    Arc::new(move |t, i| {
        let (client, value) = (client.clone(), value.clone());
        Box::pin(async move {
            if is_get {
                client.get(w.key(t, i)).await.is_ok()
            } else {
                client.put(w.key(t, i), value).await.is_ok()
            }
        })
    })
}

// ------------------------------------------------------------ the floor

/// The region context of the (single) region, from PD.
async fn region_context(pd: &str, cluster_id: u64) -> Result<Context, String> {
    let rt = TokioRuntime::new();
    let transport = GrpcTransport::new(TransportConfig::default());
    let target = Target::Pd { addr: pd.into() };
    let mut req = PdRequest::GetRegion(Box::new(GetRegionRequest {
        region_key: b"bench".to_vec().into(),
        ..Default::default()
    }));
    req.set_cluster_id(cluster_id);
    let deadline = rt.now() + Duration::from_secs(5);
    match transport.call(&target, Request::Pd(req), deadline).await {
        Ok(Response::Pd(PdResponse::GetRegion(r))) => {
            let region = r.region.ok_or("no region")?;
            Ok(Context {
                region_id: region.id,
                region_epoch: region.region_epoch,
                peer: r.leader,
                ..Default::default()
            })
        }
        other => Err(format!("GetRegion: {other:?}")),
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

/// The minimal stream client: callers queue prebuilt entries; one task
/// sends whatever is queued as one message; one task completes waiters.
#[derive(Clone)]
struct FloorStream {
    queue: mpsc::UnboundedSender<(ReqCmd, oneshot::Sender<()>)>,
}

impl FloorStream {
    async fn open(channel: Channel) -> Result<FloorStream, String> {
        let (queue, mut rx) = mpsc::unbounded_channel::<(ReqCmd, oneshot::Sender<()>)>();
        let (out_tx, out_rx) = futures::channel::mpsc::unbounded::<BatchCommandsRequest>();
        let waiters: Waiters = Arc::default();
        let mut client = TikvClient::new(channel);
        // Queue an empty first message so the call's headers come back.
        let _ = out_tx.unbounded_send(BatchCommandsRequest::default());
        let mut answers =
            client.batch_commands(out_rx).await.map_err(|e| e.to_string())?.into_inner();
        let w = waiters.clone();
        tokio::spawn(async move {
            let mut next_id = 0u64;
            while let Some(first) = rx.recv().await {
                let mut entries = vec![first];
                while entries.len() < 128 {
                    match rx.try_recv() {
                        Ok(e) => entries.push(e),
                        Err(_) => break,
                    }
                }
                let mut batch = BatchCommandsRequest::default();
                {
                    let mut map = w.lock().unwrap_or_else(PoisonError::into_inner);
                    for (cmd, tx) in entries {
                        next_id += 1;
                        map.insert(next_id, tx);
                        batch.requests.push(ReqEntry { cmd: Some(cmd) });
                        batch.request_ids.push(next_id);
                    }
                }
                if out_tx.unbounded_send(batch).is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Ok(Some(BatchCommandsResponse { request_ids, .. })) = answers.message().await
            {
                let mut map = waiters.lock().unwrap_or_else(PoisonError::into_inner);
                for id in request_ids {
                    if let Some(tx) = map.remove(&id) {
                        let _ = tx.send(());
                    }
                }
            }
        });
        Ok(FloorStream { queue })
    }

    async fn call(&self, cmd: ReqCmd) -> bool {
        let (tx, rx) = oneshot::channel();
        self.queue.send((cmd, tx)).is_ok() && rx.await.is_ok()
    }
}

// ------------------------------------------------------------ main

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have_taskset() -> bool {
    Command::new("taskset").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn start_server(pinned: bool) -> Result<(Server, String, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let sim = std::env::var_os("TIKV_SIM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| exe.with_file_name("tikv-sim"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let pd = format!("127.0.0.1:{port}");
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.arg("-c").arg("1").arg(&sim);
        c
    } else {
        Command::new(&sim)
    };
    cmd.args(["--pd", &pd, "--stores", "1"]).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child =
        cmd.spawn().map_err(|e| format!("cannot start {} ({e}); build it first", sim.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let server = Server(child);
    let mut store = None;
    use std::io::BufRead;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(addr) = line.strip_prefix("store 1: ") {
            store = Some(addr.to_owned());
        }
        if line.starts_with("regions:") {
            break;
        }
    }
    let store = store.ok_or("tikv-sim did not print its store address")?;
    Ok((server, pd, store))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: tikv-bench [--secs S] [--conc 1,64,256] [--ops get,put] [--modes batch,unary,floor-stream,floor-unary,client-go,tikv-client] [--key-len N] [--value-len N] [--client-go PATH] [--tikv-client PATH]"
            );
            return ExitCode::from(2);
        }
    };
    let pinned = have_taskset();
    if pinned && std::env::var_os("TIKV_BENCH_PINNED").is_none() {
        // Re-run this process on core 0; the server gets core 1.
        let status = Command::new("taskset")
            .arg("-c")
            .arg("0")
            .args(std::env::args_os())
            .env("TIKV_BENCH_PINNED", "1")
            .status();
        return match status {
            Ok(s) if s.success() => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        };
    }
    let (server, pd, store) = match start_server(pinned) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
    let result = rt.block_on(bench(args, pd, store, pinned));
    drop(server);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: Args, pd: String, store: String, pinned: bool) -> Result<(), String> {
    let config = Config::default().with_pd_endpoints([pd.clone()]);
    let batch = tikv_tokio::RawClient::connect_with_config(config.clone())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let unary = RawClient::<Unary>::connect_with_config(config.clone())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let basic = RawClient::<BatchBasic>::connect_with_config(config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let ctx = region_context(&pd, batch.cluster_id()).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{store}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let floor = FloorStream::open(channel.clone()).await?;
    let w = args.workload;
    let value = w.value();
    // Every key exists, so gets return values.
    for t in 0..args.conc.iter().copied().max().unwrap_or(1) {
        let pairs = (0..w.keys_per_task).map(|i| (w.key(t, i), value.clone())).collect::<Vec<_>>();
        batch.batch_put(pairs).await.map_err(|e| format!("preload: {e}"))?;
    }
    let mut peers = Peers::new(
        PeerPlan {
            pd: pd.clone(),
            ops: args.ops.clone(),
            conc: args.conc.clone(),
            secs: args.secs,
            workload: w,
        },
        args.peer_bins.clone(),
    );
    let mut all_rows = Vec::new();

    println!(
        "# tikv-bench: {}s per cell, 1 client worker{}, key {} B, value {} B",
        args.secs,
        if pinned { ", client on core 0, tikv-sim on core 1" } else { ", unpinned" },
        w.key_len,
        w.value_len,
    );
    println!(
        "| op | conc | mode | ops/s | p50 us | p99 us | client CPU us/op | errors | ops/s vs floor | CPU/op vs floor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for op_name in &args.ops {
        for &conc in &args.conc {
            let mut floors: HashMap<&str, (f64, f64)> = HashMap::new();
            let mut rows = Vec::new();
            // Floors first, so each of our rows can show its ratio.
            let mut modes: Vec<&str> = args.modes.iter().map(String::as_str).collect();
            modes.sort_by_key(|m| !m.starts_with("floor"));
            for mode in modes {
                let is_get = op_name == "get";
                let op: Op = match mode {
                    "batch" => ours(&batch, is_get, w),
                    "batch-basic" => ours(&basic, is_get, w),
                    "unary" => ours(&unary, is_get, w),
                    "transport" => {
                        let transport = Arc::new(GrpcTransport::new(TransportConfig::default()));
                        let target = Target::Store { store_id: 1, addr: store.clone().into() };
                        let (ctx, value) = (ctx.clone(), value.clone());
                        let rt = TokioRuntime::new();
                        Arc::new(move |t, i| {
                            let request = if is_get {
                                KvRequest::RawGet(Box::new(RawGetRequest {
                                    context: Some(ctx.clone()),
                                    key: w.key(t, i).into(),
                                    ..Default::default()
                                }))
                            } else {
                                KvRequest::RawPut(Box::new(RawPutRequest {
                                    context: Some(ctx.clone()),
                                    key: w.key(t, i).into(),
                                    value: value.clone().into(),
                                    ..Default::default()
                                }))
                            };
                            let deadline = rt.now() + Duration::from_secs(5);
                            let call = transport.call(&target, Request::Kv(request), deadline);
                            Box::pin(async move { call.await.is_ok() })
                        })
                    }
                    "floor-stream" => {
                        let (floor, ctx, value) = (floor.clone(), ctx.clone(), value.clone());
                        Arc::new(move |t, i| {
                            let cmd = if is_get {
                                ReqCmd::RawGet(RawGetRequest {
                                    context: Some(ctx.clone()),
                                    key: w.key(t, i).into(),
                                    ..Default::default()
                                })
                            } else {
                                ReqCmd::RawPut(RawPutRequest {
                                    context: Some(ctx.clone()),
                                    key: w.key(t, i).into(),
                                    value: value.clone().into(),
                                    ..Default::default()
                                })
                            };
                            let floor = floor.clone();
                            Box::pin(async move { floor.call(cmd).await })
                        })
                    }
                    "floor-unary" => {
                        let (channel, ctx, value) = (channel.clone(), ctx.clone(), value.clone());
                        Arc::new(move |t, i| {
                            let mut client = TikvClient::new(channel.clone());
                            let (ctx, value) = (ctx.clone(), value.clone());
                            Box::pin(async move {
                                let key = w.key(t, i).into();
                                if is_get {
                                    let req = RawGetRequest {
                                        context: Some(ctx),
                                        key,
                                        ..Default::default()
                                    };
                                    client.raw_get(req).await.is_ok()
                                } else {
                                    let req = RawPutRequest {
                                        context: Some(ctx),
                                        key,
                                        value: value.into(),
                                        ..Default::default()
                                    };
                                    client.raw_put(req).await.is_ok()
                                }
                            })
                        })
                    }
                    peer if PEER_MODES.contains(&peer) => {
                        let o = peers.cell(peer, op_name, conc).await?;
                        rows.push(format!(
                            "| {op_name} | {conc} | {mode} | {:.0} | {} | {} | {:.1} | {} |  |  |",
                            o.ops_per_sec(),
                            o.p50_us,
                            o.p99_us,
                            o.cpu_us_per_op(),
                            o.errors,
                        ));
                        all_rows.push(Row { mode: mode.to_owned(), result: o });
                        continue;
                    }
                    other => return Err(format!("unknown mode {other}")),
                };
                let o = workload::run(op, op_name, conc, args.secs).await;
                let ops_s = o.ops_per_sec();
                let cpu_op = o.cpu_us_per_op();
                if mode.starts_with("floor") {
                    floors.insert(
                        if mode == "floor-stream" { "batch" } else { "unary" },
                        (ops_s, cpu_op),
                    );
                }
                let floor_of =
                    if mode.starts_with("batch") || mode == "transport" { "batch" } else { mode };
                let ratio = floors
                    .get(floor_of)
                    .map(|(f_ops, f_cpu)| format!("{:.2} | {:.2}", ops_s / f_ops, cpu_op / f_cpu))
                    .unwrap_or_else(|| " | ".to_owned());
                rows.push(format!(
                    "| {op_name} | {conc} | {mode} | {ops_s:.0} | {} | {} | {cpu_op:.1} | {} | {ratio} |",
                    o.p50_us, o.p99_us, o.errors,
                ));
                all_rows.push(Row { mode: mode.to_owned(), result: o });
            }
            for row in rows {
                println!("{row}");
            }
        }
    }
    let ratios = tikv_bench::peers::ratio_table(&all_rows);
    if !ratios.is_empty() && all_rows.iter().any(|r| PEER_MODES.contains(&r.mode.as_str())) {
        println!(
            "\n# ours ÷ peer and ours ÷ floor, same run (ops/s: higher is better for us; CPU/op: lower)"
        );
        print!("{ratios}");
    }
    // A cell with failed or no operations measured nothing worth comparing.
    let broken: Vec<_> = all_rows
        .iter()
        .filter(|r| r.result.errors > 0 || r.result.ops == 0)
        .map(|r| format!("{} {} at {}", r.mode, r.result.op, r.result.conc))
        .collect();
    if !broken.is_empty() {
        return Err(format!("cells with errors or no completed operation: {}", broken.join(", ")));
    }
    Ok(())
}
