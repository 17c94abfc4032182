//! `tikv-bench`: raw get/put throughput, latency and client CPU on loopback.
//!
//! ```text
//! cargo build --release -p tikv-sim -p tikv-bench
//! target/release/tikv-bench [--secs 3] [--conc 1,64,256] [--ops get,put]
//!                           [--modes batch,unary,floor-stream,floor-unary]
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
//! - `floor-unary`: prebuilt unary tonic calls.
//!
//! Each (op, concurrency, mode) runs for `--secs` after a short warm-up;
//! keys are 24 bytes, values 128 bytes. CPU is the client process's
//! user+system time from `/proc/self/stat` (10 ms ticks), divided by
//! completed operations. The ratios compare each of our modes with its
//! floor from the same run.

use std::collections::HashMap;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
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

const VALUE_LEN: usize = 128;
const KEYS_PER_TASK: u64 = 1000;

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
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        secs: 3.0,
        conc: vec![1, 64, 256],
        ops: vec!["get".into(), "put".into()],
        modes: ["batch", "unary", "floor-stream", "floor-unary"].map(String::from).to_vec(),
    };
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
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// The client's CPU time so far (user + system, all threads).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces): state is
    // field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 are at 11 and 12 counting from state = 0. USER_HZ is
    // 100 on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn key(task: usize, i: u64) -> Vec<u8> {
    format!("bench-key-{task:06}-{:07}", i % KEYS_PER_TASK).into_bytes()
}

/// One operation of a mode, by task and sequence number.
type Op = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, bool> + Send + Sync>;

struct Outcome {
    ops: u64,
    errors: u64,
    elapsed: Duration,
    cpu: Duration,
    latencies: Vec<u32>,
}

async fn run(op: Op, conc: usize, secs: f64) -> Outcome {
    let warm = Duration::from_millis(300);
    let measure = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conc)
        .map(|t| {
            let (op, measure, stop, errors) =
                (op.clone(), measure.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let ok = op(t, i).await;
                    i += 1;
                    if measure.load(Ordering::Relaxed) {
                        if ok {
                            lat.push(
                                u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX),
                            );
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(warm).await;
    let (t0, cpu0) = (Instant::now(), cpu_time());
    measure.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    measure.store(false, Ordering::Relaxed);
    let (elapsed, cpu) = (t0.elapsed(), cpu_time().saturating_sub(cpu0));
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap_or_default());
    }
    latencies.sort_unstable();
    Outcome {
        ops: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        cpu,
        latencies,
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A raw get or put through one of our clients.
fn ours<P: Platform>(client: &RawClient<P>, is_get: bool, value: &[u8]) -> Op
where
    RawClient<P>: Clone,
{
    let (client, value) = (client.clone(), value.to_vec());
    Arc::new(move |t, i| {
        let (client, value) = (client.clone(), value.clone());
        Box::pin(async move {
            if is_get {
                client.get(key(t, i)).await.is_ok()
            } else {
                client.put(key(t, i), value).await.is_ok()
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
                "{e}\nusage: tikv-bench [--secs S] [--conc 1,64,256] [--ops get,put] [--modes batch,unary,floor-stream,floor-unary]"
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
    let value = vec![b'v'; VALUE_LEN];
    // Every key exists, so gets return values.
    for t in 0..args.conc.iter().copied().max().unwrap_or(1) {
        for i in 0..KEYS_PER_TASK.min(64) {
            batch.put(key(t, i), value.clone()).await.map_err(|e| format!("preload: {e}"))?;
        }
    }

    println!(
        "# tikv-bench: {}s per cell, 1 client worker{}, key 24 B, value {VALUE_LEN} B",
        args.secs,
        if pinned { ", client on core 0, tikv-sim on core 1" } else { ", unpinned" }
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
                    "batch" => ours(&batch, is_get, &value),
                    "batch-basic" => ours(&basic, is_get, &value),
                    "unary" => ours(&unary, is_get, &value),
                    "transport" => {
                        let transport = Arc::new(GrpcTransport::new(TransportConfig::default()));
                        let target = Target::Store { store_id: 1, addr: store.clone().into() };
                        let (ctx, value) = (ctx.clone(), value.clone());
                        let rt = TokioRuntime::new();
                        Arc::new(move |t, i| {
                            let request = if is_get {
                                KvRequest::RawGet(Box::new(RawGetRequest {
                                    context: Some(ctx.clone()),
                                    key: key(t, i).into(),
                                    ..Default::default()
                                }))
                            } else {
                                KvRequest::RawPut(Box::new(RawPutRequest {
                                    context: Some(ctx.clone()),
                                    key: key(t, i).into(),
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
                                    key: key(t, i).into(),
                                    ..Default::default()
                                })
                            } else {
                                ReqCmd::RawPut(RawPutRequest {
                                    context: Some(ctx.clone()),
                                    key: key(t, i).into(),
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
                                let key = key(t, i).into();
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
                    other => return Err(format!("unknown mode {other}")),
                };
                let o = run(op, conc, args.secs).await;
                let ops_s = o.ops as f64 / o.elapsed.as_secs_f64();
                let cpu_op = o.cpu.as_secs_f64() * 1e6 / (o.ops.max(1) as f64);
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
                    percentile(&o.latencies, 0.50),
                    percentile(&o.latencies, 0.99),
                    o.errors,
                ));
            }
            for row in rows {
                println!("{row}");
            }
        }
    }
    Ok(())
}
