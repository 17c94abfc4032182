//! `tikv-bench`: raw get/put throughput, latency and CPU on loopback, in
//! one table with the ratios issue #7 sets targets on.
//!
//! ```text
//! cargo build --release -p tikv-sim -p tikv-bench
//! target/release/tikv-bench [--secs 2] [--reps 3] [--servers echo,sim]
//!                           [--conc 1,64,256,1024] [--ops get,put]
//!                           [--modes batch,unary,floor-stream,floor-unary]
//!                           [--key-len 24] [--value-len 128]
//!                           [--client-go PATH] [--tikv-client PATH]
//! ```
//!
//! Servers, each a separate process pinned to core 1 with `taskset` when
//! available (this process re-executes itself on core 0), one at a time:
//! - `echo`: `tikv-echo` (`tikv_sim::echo`), a store and PD with canned
//!   answers: the server costs next to nothing, so a cell measures the
//!   client and the transport. `floor-stream` against it is the **stream
//!   echo ceiling** (`perf-reliability-anchors.md` §3.3, B1);
//! - `sim`: `tikv-sim` with one store and one region: every request runs
//!   the MVCC model, as a real server would do work.
//!
//! The client runs on a one-worker tokio runtime. Modes:
//! - `batch`: our `RawClient` (region cache, request building, retry loop)
//!   over `BatchCommands` streams (4 per store, the default);
//! - `batch-basic`: the same with client-go's `basic` policy (never wait
//!   for more requests), `batch-1stream`, `batch-2streams`: the same with
//!   one or two streams (B3; not in the default set);
//! - `batch-dedicated`: the same client with its tasks on a one-worker
//!   runtime of its own (`Config::with_dedicated_runtime(1)`): callers and
//!   streams on two threads of the client core (not in the default set);
//! - `batch-async-std`: our client on the async-std runtime, its caller
//!   tasks on async-std's executor too, as an async-std application runs
//!   them (its executor and reactor threads on the client core; not in the
//!   default set; feature `async-std`, on by default);
//! - `transport`: our `GrpcTransport` alone on the stream, prebuilt
//!   requests as the floor's (no driver, no routing; not in the default set);
//! - `unary`: the same client with `TransportConfig::batch_commands(false)`;
//! - `floor-stream`: a minimal tonic client on one `BatchCommands` stream:
//!   prebuilt requests with the region context filled in, no routing, an
//!   id → oneshot map and a sender task taking whatever is queued;
//! - `floor-unary`: prebuilt unary tonic calls;
//! - `client-go`, `tikv-client`: the peers, each in its own process
//!   (`tikv_bench::peers`; not in the default set). Their programs are
//!   found next to this binary (`peer-client-go`, `tikv-client-bench`) or
//!   given with `--client-go` / `--tikv-client`; `bench/side-by-side.sh`
//!   builds everything and runs them all.
//!
//! Each (server, op, concurrency, mode) cell runs the workload of
//! `tikv_bench::workload` for `--secs` after a short warm-up, `--reps`
//! times (the repetitions interleave: every cell once, then again), and
//! the table shows the median of each column. Client CPU is this
//! process's user+system time per completed operation in the measured
//! window; server CPU is the server process's; the average batch is
//! entries per `BatchCommands` message the server received in the cell.
//! Peers run in their own processes (client CPU is theirs) and report no
//! server columns. A last table checks issue #7's targets: ours (`batch`)
//! against the stream echo (`floor-stream` on `echo`) and against
//! tikv-client 0.4 on each server.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tikv_bench::peers::{PEER_MODES, PeerPlan, Peers, Row};
use tikv_bench::server::{SERVERS, Server, ServerStats, run_on_client_core};
use tikv_bench::workload::{self, CellResult, Op, Workload};
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
        let transport = GrpcTransport::new(config.transport.clone().batch_commands(false));
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
        let transport =
            GrpcTransport::new(config.transport.clone().batch_policy(BatchPolicy::Basic));
        Ok((TokioRuntime::new(), transport))
    }
}

/// The tokio platform with `N` batch streams per store (B3).
struct BatchStreams<const N: usize>;

impl<const N: usize> Platform for BatchStreams<N> {
    type Runtime = TokioRuntime;
    type Transport = GrpcTransport;

    fn build(config: &Config) -> Result<(TokioRuntime, GrpcTransport), tikv_core::Error> {
        let transport = GrpcTransport::new(config.transport.clone().batch_streams_per_store(N));
        Ok((TokioRuntime::new(), transport))
    }
}

struct Args {
    secs: f64,
    reps: usize,
    servers: Vec<String>,
    conc: Vec<usize>,
    ops: Vec<String>,
    modes: Vec<String>,
    workload: Workload,
    peer_bins: HashMap<&'static str, PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        secs: 2.0,
        reps: 3,
        servers: vec!["echo".into(), "sim".into()],
        conc: vec![1, 64, 256, 1024],
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
            "--reps" => {
                args.reps = value.parse().map_err(|_| "--reps: a number")?;
                args.reps = args.reps.max(1);
            }
            "--servers" => {
                args.servers = list();
                if let Some(s) = args.servers.iter().find(|s| !SERVERS.contains(&s.as_str())) {
                    return Err(format!("--servers: unknown server {s} ({})", SERVERS.join(", ")));
                }
            }
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

/// Where `mode`'s caller tasks run: async-std's executor for the async-std
/// client, as an async-std application calls it (callers on tokio would
/// cross threads at every call and answer), else the benchmark's tokio
/// runtime.
fn callers_of(mode: &str) -> workload::Spawn {
    match mode {
        #[cfg(feature = "async-std")]
        "batch-async-std" => spawn_on_async_std,
        _ => workload::spawn_on_tokio,
    }
}

/// [`workload::Spawn`] on async-std's executor, through the client's own
/// runtime adapter.
#[cfg(feature = "async-std")]
fn spawn_on_async_std(
    task: futures::future::BoxFuture<'static, Vec<u32>>,
) -> futures::future::BoxFuture<'static, Vec<u32>> {
    let (tx, rx) = futures::channel::oneshot::channel();
    tikv_async_std::AsyncStdRuntime::new().spawn(Box::pin(async move {
        let _ = tx.send(task.await);
    }));
    Box::pin(async move { rx.await.unwrap_or_default() })
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

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: tikv-bench [--secs S] [--reps N] [--servers echo,sim,sim-faults] [--conc 1,64,256,1024] [--ops get,put] [--modes batch,batch-basic,batch-1stream,batch-2streams,batch-dedicated,batch-async-std,transport,unary,floor-stream,floor-unary,client-go,tikv-client] [--key-len N] [--value-len N] [--client-go PATH] [--tikv-client PATH]"
            );
            return ExitCode::from(2);
        }
    };
    run_on_client_core(|pinned| bench(args, pinned))
}

/// Our clients and the floors, connected to one server.
struct Clients {
    batch: RawClient<tikv_tokio::Tokio>,
    basic: RawClient<BatchBasic>,
    one_stream: RawClient<BatchStreams<1>>,
    two_streams: RawClient<BatchStreams<2>>,
    unary: RawClient<Unary>,
    /// Our client with its tasks on a one-worker runtime of its own
    /// (`batch-dedicated`).
    dedicated: RawClient<tikv_tokio::Tokio>,
    /// Our client on async-std (`batch-async-std`).
    #[cfg(feature = "async-std")]
    async_std: RawClient<tikv_async_std::AsyncStd>,
    /// The region context the floors' prebuilt requests carry.
    ctx: Context,
    store: String,
    channel: Channel,
    floor: FloorStream,
}

async fn connect<P: Platform>(config: &Config) -> Result<RawClient<P>, String> {
    RawClient::<P>::connect_with_config(config.clone()).await.map_err(|e| format!("connect: {e}"))
}

impl Clients {
    async fn connect(server: &Server) -> Result<Clients, String> {
        let config = Config::default().with_pd_endpoints([server.pd.clone()]);
        let batch = connect(&config).await?;
        let ctx = region_context(&server.pd, batch.cluster_id()).await?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.store))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Clients {
            batch,
            basic: connect(&config).await?,
            one_stream: connect(&config).await?,
            two_streams: connect(&config).await?,
            unary: connect(&config).await?,
            dedicated: connect(&config.clone().with_dedicated_runtime(1)).await?,
            #[cfg(feature = "async-std")]
            async_std: connect(&config).await?,
            ctx,
            store: server.store.clone(),
            floor: FloorStream::open(channel.clone()).await?,
            channel,
        })
    }

    /// The operation of `mode`; `None` for a peer (run in its own process).
    fn op(&self, mode: &str, is_get: bool, w: Workload) -> Result<Option<Op>, String> {
        let value = w.value();
        Ok(Some(match mode {
            "batch" => ours(&self.batch, is_get, w),
            "batch-basic" => ours(&self.basic, is_get, w),
            "batch-1stream" => ours(&self.one_stream, is_get, w),
            "batch-2streams" => ours(&self.two_streams, is_get, w),
            "unary" => ours(&self.unary, is_get, w),
            "batch-dedicated" => ours(&self.dedicated, is_get, w),
            #[cfg(feature = "async-std")]
            "batch-async-std" => ours(&self.async_std, is_get, w),
            "transport" => {
                let transport = Arc::new(GrpcTransport::new(TransportConfig::default()));
                let target = Target::Store {
                    store_id: 1,
                    addr: self.store.clone().into(),
                    forwarded_host: None,
                };
                let ctx = self.ctx.clone();
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
                let (floor, ctx) = (self.floor.clone(), self.ctx.clone());
                Arc::new(move |t, i| {
                    let cmd = if is_get {
                        ReqCmd::RawGet(Box::new(RawGetRequest {
                            context: Some(ctx.clone()),
                            key: w.key(t, i).into(),
                            ..Default::default()
                        }))
                    } else {
                        ReqCmd::RawPut(Box::new(RawPutRequest {
                            context: Some(ctx.clone()),
                            key: w.key(t, i).into(),
                            value: value.clone().into(),
                            ..Default::default()
                        }))
                    };
                    let floor = floor.clone();
                    Box::pin(async move { floor.call(cmd).await })
                })
            }
            "floor-unary" => {
                let (channel, ctx) = (self.channel.clone(), self.ctx.clone());
                Arc::new(move |t, i| {
                    let mut client = TikvClient::new(channel.clone());
                    let (ctx, value) = (ctx.clone(), value.clone());
                    Box::pin(async move {
                        let key = w.key(t, i).into();
                        if is_get {
                            let req =
                                RawGetRequest { context: Some(ctx), key, ..Default::default() };
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
            peer if PEER_MODES.contains(&peer) => return Ok(None),
            other => return Err(format!("unknown mode {other}")),
        }))
    }
}

/// One repetition of one cell.
struct Sample {
    result: CellResult,
    /// Server CPU in the measured window (`None` for peers).
    server_cpu: Option<Duration>,
    /// The server's traffic during the cell.
    traffic: Option<ServerStats>,
}

/// The median of a cell's repetitions, column by column.
#[derive(Clone, Debug)]
struct Median {
    ops_s: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_op: f64,
    server_cpu_us_op: Option<f64>,
    avg_batch: Option<f64>,
    pd_calls_s: Option<f64>,
    peak_rss_mib: Option<f64>,
    errors: u64,
    ops: u64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some((v[(n - 1) / 2] + v[n / 2]) / 2.0)
}

impl Median {
    fn of(samples: &[Sample]) -> Median {
        let col =
            |f: &dyn Fn(&Sample) -> Option<f64>| median(samples.iter().filter_map(f).collect());
        Median {
            ops_s: col(&|s| Some(s.result.ops_per_sec())).unwrap_or(0.0),
            p50_us: col(&|s| Some(f64::from(s.result.p50_us))).unwrap_or(0.0),
            p99_us: col(&|s| Some(f64::from(s.result.p99_us))).unwrap_or(0.0),
            cpu_us_op: col(&|s| Some(s.result.cpu_us_per_op())).unwrap_or(0.0),
            server_cpu_us_op: col(&|s| {
                Some(s.server_cpu?.as_secs_f64() * 1e6 / s.result.ops.max(1) as f64)
            }),
            avg_batch: col(&|s| match s.traffic? {
                ServerStats { messages: 0, .. } => None,
                t => Some(t.entries as f64 / t.messages as f64),
            }),
            // Over the whole cell (warm-up included), per measured second:
            // an upper bound on the measured window's rate.
            pd_calls_s: col(&|s| {
                Some(s.traffic?.pd_unary? as f64 / s.result.elapsed.as_secs_f64().max(1e-9))
            }),
            peak_rss_mib: col(&|s| match s.result.peak_rss_kib {
                0 => None,
                kib => Some(kib as f64 / 1024.0),
            }),
            errors: samples.iter().map(|s| s.result.errors).sum(),
            ops: samples.iter().map(|s| s.result.ops).min().unwrap_or(0),
        }
    }

    /// A one-second result with the median rates, for the peer ratio table.
    fn as_result(&self, op: &str, conc: usize) -> CellResult {
        CellResult {
            op: op.to_owned(),
            conc,
            ops: self.ops_s.round() as u64,
            errors: self.errors,
            elapsed: Duration::from_secs(1),
            cpu: Duration::from_secs_f64(self.cpu_us_op * self.ops_s / 1e6),
            p50_us: self.p50_us.round() as u32,
            p99_us: self.p99_us.round() as u32,
            peak_rss_kib: self.peak_rss_mib.map_or(0, |m| (m * 1024.0).round() as u64),
        }
    }
}

/// Cell → repetitions, in first-run order.
type Cells = Vec<((String, usize, String), Vec<Sample>)>;

/// Every repetition of every cell against one server.
async fn run_server(args: &Args, server: &mut Server) -> Result<Cells, String> {
    let clients = Clients::connect(server).await?;
    let w = args.workload;
    let mut cells: Cells = Vec::new();
    for rep in 0..args.reps {
        let mut peers = Peers::new(
            PeerPlan {
                pd: server.pd.clone(),
                ops: args.ops.clone(),
                conc: args.conc.clone(),
                secs: args.secs,
                workload: w,
            },
            args.peer_bins.clone(),
        );
        eprintln!("# repetition {} of {}", rep + 1, args.reps);
        for op_name in &args.ops {
            for &conc in &args.conc {
                for mode in &args.modes {
                    let sample = match clients.op(mode, op_name == "get", w)? {
                        Some(op) => {
                            let before = server.stats();
                            let (result, server_cpu) = workload::run_with_server(
                                op,
                                callers_of(mode),
                                op_name,
                                conc,
                                args.secs,
                                || server.cpu(),
                            )
                            .await;
                            let after = server.stats();
                            let traffic = before.zip(after).map(|(b, a)| b.delta(a));
                            Sample { result, server_cpu: Some(server_cpu), traffic }
                        }
                        None => Sample {
                            result: peers.cell(mode, op_name, conc).await?,
                            server_cpu: None,
                            traffic: None,
                        },
                    };
                    let key = (op_name.clone(), conc, mode.clone());
                    match cells.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.push(sample),
                        None => cells.push((key, vec![sample])),
                    }
                }
            }
        }
    }
    Ok(cells)
}

/// Medians by server and cell.
type Medians = Vec<(String, String, usize, String, Median)>;

fn find<'a>(m: &'a Medians, server: &str, op: &str, conc: usize, mode: &str) -> Option<&'a Median> {
    m.iter()
        .find(|(s, o, c, md, _)| s == server && o == op && *c == conc && md == mode)
        .map(|(.., x)| x)
}

/// `value` with its verdict against `target` (`at_least` or at most).
fn verdict(value: Option<f64>, target: f64, at_least: bool) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) if v.is_finite() => {
            let met = if at_least { v >= target } else { v <= target };
            format!("{v:.2} {}", if met { "met" } else { "NOT met" })
        }
        Some(_) => "–".to_owned(),
    }
}

/// Issue #7's targets, from the medians of this run.
fn targets_table(m: &Medians, args: &Args) -> String {
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let mut out = String::from(
        "| op | conc | ops/s ÷ stream echo (≥ 0.60) | client CPU/op ÷ stream echo (≤ 1.5) | p99 ÷ stream echo (≤ 2, conc 64) | ops/s ÷ tikv-client on echo (≥ 3) | ops/s ÷ tikv-client on sim (≥ 3) |\n|---|---|---|---|---|---|---|\n",
    );
    for op in &args.ops {
        for &conc in args.conc.iter().filter(|c| [64, 256].contains(*c)) {
            let ours = |server: &str| find(m, server, op, conc, "batch");
            let echo = find(m, "echo", op, conc, "floor-stream");
            let tc = |server: &str| find(m, server, op, conc, "tikv-client").map(|x| x.ops_s);
            let ops = ratio(ours("echo").map(|x| x.ops_s), echo.map(|x| x.ops_s));
            let cpu = ratio(ours("echo").map(|x| x.cpu_us_op), echo.map(|x| x.cpu_us_op));
            let p99 = if conc == 64 {
                verdict(ratio(ours("echo").map(|x| x.p99_us), echo.map(|x| x.p99_us)), 2.0, false)
            } else {
                "–".to_owned()
            };
            out.push_str(&format!(
                "| {op} | {conc} | {} | {} | {p99} | {} | {} |\n",
                verdict(ops, 0.6, true),
                verdict(cpu, 1.5, false),
                verdict(ratio(ours("echo").map(|x| x.ops_s), tc("echo")), 3.0, true),
                verdict(ratio(ours("sim").map(|x| x.ops_s), tc("sim")), 3.0, true),
            ));
        }
    }
    out
}

async fn bench(args: Args, pinned: bool) -> Result<(), String> {
    let w = args.workload;
    println!(
        "# tikv-bench: {} s per cell, medians of {}, 1 client worker{}, key {} B, value {} B",
        args.secs,
        args.reps,
        if pinned { ", client on core 0, server on core 1" } else { ", unpinned" },
        w.key_len,
        w.value_len,
    );
    let mut medians: Medians = Vec::new();
    for kind in &args.servers {
        let value_len = w.value_len.to_string();
        let server_args: &[&str] = match kind.as_str() {
            "echo" => &["--value-len", &value_len],
            "sim-faults" => &[
                "--stores",
                "3",
                "--regions",
                "3",
                "--region-error-rate",
                "0.1",
                "--region-error-kinds",
                "not-leader,epoch-not-match",
            ],
            _ => &["--stores", "1"],
        };
        let mut server = Server::start(kind, server_args, pinned)?;
        if kind != "echo" {
            // Every key exists, so gets return values (the echo cluster
            // answers every get with a value and stores nothing).
            let preload = Clients::connect(&server).await?;
            let value = w.value();
            for t in 0..args.conc.iter().copied().max().unwrap_or(1) {
                let pairs =
                    (0..w.keys_per_task).map(|i| (w.key(t, i), value.clone())).collect::<Vec<_>>();
                preload.batch.batch_put(pairs).await.map_err(|e| format!("preload: {e}"))?;
            }
        }
        let cells = run_server(&args, &mut server).await?;
        drop(server);
        println!(
            "\n## server: {kind}{}\n",
            match kind.as_str() {
                "echo" => " (canned answers: the client and transport alone)",
                "sim-faults" => {
                    " (3 stores, 3 regions, 10 % of requests answered NotLeader or EpochNotMatch)"
                }
                _ => " (the MVCC model behind every request)",
            }
        );
        println!(
            "| op | conc | mode | ops/s | p50 us | p99 us | client CPU us/op | server CPU us/op | avg batch | PD calls/s | client peak RSS MiB | errors |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut rows = Vec::new();
        for ((op, conc, mode), samples) in &cells {
            let m = Median::of(samples);
            let opt = |v: Option<f64>, digits: usize| {
                v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
            };
            println!(
                "| {op} | {conc} | {mode} | {:.0} | {:.0} | {:.0} | {:.1} | {} | {} | {} | {} | {} |",
                m.ops_s,
                m.p50_us,
                m.p99_us,
                m.cpu_us_op,
                opt(m.server_cpu_us_op, 1),
                opt(m.avg_batch, 1),
                opt(m.pd_calls_s, 1),
                opt(m.peak_rss_mib, 0),
                m.errors,
            );
            rows.push(Row { mode: mode.clone(), result: m.as_result(op, *conc) });
            medians.push((kind.clone(), op.clone(), *conc, mode.clone(), m));
        }
        let ratios = tikv_bench::peers::ratio_table(&rows);
        if !ratios.is_empty() {
            println!(
                "\n### {kind}: ours ÷ peer and ours ÷ floor (medians; ops/s: higher is better for us; CPU/op: lower)\n"
            );
            print!("{ratios}");
        }
    }
    if args.servers.iter().any(|s| s == "echo") && args.modes.iter().any(|m| m == "batch") {
        println!(
            "\n## issue #7 targets (ours = `batch`; stream echo = `floor-stream` on `echo`)\n"
        );
        print!("{}", targets_table(&medians, &args));
    }
    // A cell with failed or no operations measured nothing worth comparing.
    let broken: Vec<_> = medians
        .iter()
        .filter(|(.., m)| m.errors > 0 || m.ops == 0)
        .map(|(s, op, conc, mode, _)| format!("{mode} {op} at {conc} on {s}"))
        .collect();
    if !broken.is_empty() {
        return Err(format!("cells with errors or no completed operation: {}", broken.join(", ")));
    }
    Ok(())
}
