//! `alloc-audit`: allocations and time per operation (issue #7, B10).
//!
//! ```text
//! cargo run --release -p tikv-bench --bin alloc-audit -- [--n 200000] [--e2e-ops 20000]
//!                                                        [--conc 64] [--ops put,get]
//!                                                        [--core get,put,batch-get,snapshot-get]
//!                                                        [--floor]
//! ```
//!
//! A counting global allocator counts the allocations (and reallocations)
//! made on the measuring thread while counting is switched on.
//!
//! **Core** (no runtime, no I/O): for raw get, raw put, raw batch get of 16
//! keys and a snapshot get, each of `--n` rounds builds the operation, starts
//! it (routing it through a region cache filled beforehand), takes the one
//! RPC it emits, feeds it a response decoded beforehand and takes the result.
//! Building the responses is not counted (a transport decodes them); the
//! request the operation builds is. It prints ns/op, allocs/op and bytes/op,
//! and the sizes of one round's allocations in order.
//!
//! **Tokio** (`--e2e-ops`, 0 to skip): our `RawClient` over `BatchCommands`
//! against `tikv-sim` served in this process on another thread. The client
//! runs on a current-thread runtime on the main thread, so every client task
//! (callers, the batch stream's driver and receiver, hyper's connection) runs
//! there and only the client's allocations are counted; the server's, on its
//! own thread, are not. The figure is per operation at `--conc` concurrent
//! callers, after a warm-up, and includes tonic's and hyper's encoding and
//! framing buffers (shared by the batched requests of one message). With
//! `--floor` the same section runs `tikv-bench`'s floor client instead
//! (one stream, prebuilt contexts, no routing), for a same-harness ratio.

// A global allocator implements the `unsafe` trait `GlobalAlloc`; the
// implementation only forwards to `System` and bumps thread-local counters.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use bytes::Bytes;
use tikv_core::codec::{ApiCodec, Mode};
use tikv_core::config::Config;
use tikv_core::key::Key;
use tikv_core::key::KvPair;
use tikv_core::op::Operation;
use tikv_core::pd::{PdState, Timestamp};
use tikv_core::raw::{self, RawOptions};
use tikv_core::rpc::{KvRequest, KvResponse, Request, Response, Rpc};
use tikv_core::time::Instant;
use tikv_core::txn::snapshot::{ReadOptions, SnapshotGet};
use tikv_core::view::ClusterView;
use tikv_proto::{kvrpcpb, metapb};

// ------------------------------------------------------------ the allocator

/// Sizes of the first allocations of a traced window.
const TRACE_LEN: usize = 64;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
    static TRACING: Cell<bool> = const { Cell::new(false) };
    static TRACE: Cell<[u32; TRACE_LEN]> = const { Cell::new([0; TRACE_LEN]) };
}

struct CountingAlloc;

fn note(size: usize) {
    // `try_with`: never panic inside the allocator, even during thread exit.
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if !counting {
        return;
    }
    let n = ALLOCS.try_with(|a| {
        let n = a.get();
        a.set(n + 1);
        n
    });
    let _ = BYTES.try_with(|b| b.set(b.get() + size as u64));
    if TRACING.try_with(Cell::get).unwrap_or(false)
        && let Ok(n) = n
        && (n as usize) < TRACE_LEN
    {
        let _ = TRACE.try_with(|t| {
            let mut sizes = t.get();
            sizes[n as usize] = u32::try_from(size).unwrap_or(u32::MAX);
            t.set(sizes);
        });
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments;
// `note` does not allocate (const-initialised thread-locals of `Copy` types).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Allocation count and bytes on this thread since the last `reset`.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    allocs: u64,
    bytes: u64,
}

fn reset() {
    ALLOCS.with(|a| a.set(0));
    BYTES.with(|b| b.set(0));
}

fn counts() -> Counts {
    Counts { allocs: ALLOCS.with(Cell::get), bytes: BYTES.with(Cell::get) }
}

fn counting(on: bool) {
    COUNTING.with(|c| c.set(on));
}

// ------------------------------------------------------------ core rounds

/// A view that knows one region covering every key, its leader's store and
/// the cluster id: every operation routes from the cache.
fn warm_view() -> Arc<ClusterView> {
    let pd = Arc::new(PdState::new(["pd1:2379"]));
    pd.set_cluster_id(7);
    let view = Arc::new(ClusterView::new(Config::default(), ApiCodec::v1(Mode::Raw), pd));
    for store in 1..=3u64 {
        let _ = view.stores.insert(metapb::Store {
            id: store,
            address: format!("store{store}:20160"),
            ..Default::default()
        });
    }
    let peers: Vec<_> = (1..=3u64)
        .map(|s| metapb::Peer { id: 10 + s, store_id: s, ..Default::default() })
        .collect();
    let leader = peers[0];
    let meta = metapb::Region {
        id: 1,
        region_epoch: Some(metapb::RegionEpoch { conf_ver: 1, version: 1 }),
        peers,
        ..Default::default()
    };
    if let Err(e) = view.regions.insert(meta, Some(leader), Instant::ZERO) {
        panic!("cannot seed the region cache: {e:?}");
    }
    view
}

/// What one core workload measured.
struct CoreRow {
    name: &'static str,
    ns_per_op: f64,
    allocs_per_op: f64,
    bytes_per_op: f64,
    trace: Vec<u32>,
}

/// Runs `n` rounds of `make` → start → one RPC → `answer` → result, and
/// counts what the rounds allocate (the answers are built up front).
fn core_rounds<O: Operation>(
    name: &'static str,
    n: usize,
    mut make: impl FnMut(usize) -> O,
    answer: impl Fn(&KvRequest) -> KvResponse,
) -> Result<CoreRow, String> {
    let now = Instant::from_millis(1);
    // One round to learn the request shape, then the answers.
    let probe = {
        let mut op = make(0);
        op.start(now);
        let rpc = op.poll_rpc().ok_or_else(|| format!("{name}: no RPC emitted"))?;
        match rpc.request {
            Request::Kv(r) => r,
            other => return Err(format!("{name}: unexpected request {}", other.name())),
        }
    };
    let round = |op: &mut O, response: KvResponse| -> Result<(), String> {
        op.start(now);
        let Some(Rpc { id, request, .. }) = op.poll_rpc() else {
            return Err(format!("{name}: no RPC emitted"));
        };
        if op.poll_rpc().is_some() {
            return Err(format!("{name}: more than one RPC"));
        }
        // The transport consumes the request.
        drop(black_box(request));
        op.on_response(id, Ok(Response::Kv(response)), now);
        match op.poll_result() {
            Some(Ok(out)) => {
                drop(black_box(out));
                Ok(())
            }
            Some(Err(e)) => Err(format!("{name}: {e}")),
            None => Err(format!("{name}: no result after the response")),
        }
    };

    // Counted pass, with the first round traced.
    let mut answers: Vec<KvResponse> = (0..n).map(|_| answer(&probe)).collect();
    reset();
    TRACE.with(|t| t.set([0; TRACE_LEN]));
    TRACING.with(|t| t.set(true));
    let mut traced = 0;
    for i in 0..n {
        let response = answers.pop().ok_or("answers ran out")?;
        counting(true);
        let mut op = make(i);
        let outcome = round(&mut op, response);
        drop(op);
        if i == 0 {
            TRACING.with(|t| t.set(false));
            traced = counts().allocs as usize;
        }
        counting(false);
        outcome?;
    }
    let total = counts();
    let trace = TRACE.with(Cell::get)[..traced.min(TRACE_LEN)].to_vec();

    // Timed pass (nothing counted).
    let mut answers: Vec<KvResponse> = (0..n).map(|_| answer(&probe)).collect();
    let started = StdInstant::now();
    for i in 0..n {
        let response = answers.pop().ok_or("answers ran out")?;
        let mut op = make(i);
        round(&mut op, response)?;
    }
    let elapsed = started.elapsed();
    Ok(CoreRow {
        name,
        ns_per_op: elapsed.as_nanos() as f64 / n as f64,
        allocs_per_op: total.allocs as f64 / n as f64,
        bytes_per_op: total.bytes as f64 / n as f64,
        trace,
    })
}

fn core_section(n: usize, which: &[String]) -> Result<Vec<CoreRow>, String> {
    let wanted = |name: &str| which.iter().any(|w| w == name);
    let view = warm_view();
    let opts = RawOptions::default();
    let keys: Vec<Key> = (0..64u32).map(|i| Key::from(format!("key-{i:011}"))).collect();
    let value = Bytes::from(vec![b'v'; 64]);
    let batch: Vec<Key> = keys[..16].to_vec();
    let mut rows = Vec::new();

    if wanted("get") {
        rows.push(core_rounds(
            "raw get",
            n,
            |i| raw::get(&view, keys[i % keys.len()].clone(), &opts),
            |_| {
                KvResponse::RawGet(Box::new(kvrpcpb::RawGetResponse {
                    value: value.clone(),
                    ..Default::default()
                }))
            },
        )?);
    }
    if wanted("put") {
        rows.push(core_rounds(
            "raw put",
            n,
            |i| {
                let pair = KvPair { key: keys[i % keys.len()].clone(), value: value.clone() };
                raw::put(&view, pair, 0, &opts)
            },
            |_| KvResponse::RawPut(Box::default()),
        )?);
    }
    if wanted("batch-get") {
        rows.push(core_rounds(
            "raw batch get (16 keys)",
            n,
            |_| raw::batch_get(&view, batch.clone(), &opts),
            |request| {
                let KvRequest::RawBatchGet(r) = request else {
                    return KvResponse::RawBatchGet(Box::default());
                };
                KvResponse::RawBatchGet(Box::new(kvrpcpb::RawBatchGetResponse {
                    pairs: r
                        .keys
                        .iter()
                        .map(|k| kvrpcpb::KvPair {
                            key: k.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }))
            },
        )?);
    }
    if wanted("snapshot-get") {
        rows.push(core_rounds(
            "snapshot get",
            n,
            |i| {
                let opts = ReadOptions::default();
                SnapshotGet::new(
                    view.clone(),
                    keys[i % keys.len()].clone(),
                    Timestamp::from_version(400_000 + i as u64),
                    opts,
                )
            },
            |_| {
                KvResponse::Get(Box::new(kvrpcpb::GetResponse {
                    value: value.clone(),
                    ..Default::default()
                }))
            },
        )?);
    }
    Ok(rows)
}

// ------------------------------------------------------------ tokio path

struct E2eRow {
    op: &'static str,
    conc: usize,
    allocs_per_op: f64,
    bytes_per_op: f64,
}

/// A running in-process `tikv-sim`: PD and store addresses, the region's
/// context (for the floor's prebuilt requests), and the handle that stops it
/// when dropped.
struct Sim {
    pd: String,
    store: String,
    context: kvrpcpb::Context,
    _stop: std::sync::mpsc::Sender<()>,
}

/// Starts `tikv-sim` (one store, one region) on its own thread and runtime.
fn start_sim() -> Result<Sim, String> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = addr_tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let cfg = tikv_sim::cluster::ClusterConfig { stores: 1, ..Default::default() };
            let cluster = tikv_sim::cluster::Cluster::new(cfg);
            match tikv_sim::server::SimServer::start(cluster, Default::default()).await {
                Ok(server) => {
                    let pd = server.pd_addrs().into_iter().next().unwrap_or_default();
                    let store = server.store_addr(1).await.unwrap_or_default();
                    let region = server.cluster().regions().first().map_or(0, |r| r.id);
                    let context = server.cluster().context_for(region).unwrap_or_default();
                    let _ = addr_tx.send(Ok((pd, store, context)));
                    // Serve until the sender is dropped.
                    let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                    server.shutdown().await;
                }
                Err(e) => {
                    let _ = addr_tx.send(Err(e.to_string()));
                }
            }
        });
    });
    let (pd, store, context) = addr_rx.recv().map_err(|e| e.to_string())??;
    Ok(Sim { pd, store, context, _stop: stop_tx })
}

/// The floor (as `tikv-bench`'s `floor-stream` mode): a minimal tonic client
/// on one `BatchCommands` stream, with prebuilt region contexts, no routing,
/// an id → waiter map, and a sender task taking whatever is queued.
#[derive(Clone)]
struct Floor {
    queue: tokio::sync::mpsc::UnboundedSender<(FloorCmd, tokio::sync::oneshot::Sender<()>)>,
    context: Arc<kvrpcpb::Context>,
}

type FloorCmd = tikv_proto::tikvpb::batch_commands_request::request::Cmd;

impl Floor {
    async fn open(store: &str, context: kvrpcpb::Context) -> Result<Floor, String> {
        use std::collections::HashMap;
        use std::sync::Mutex;
        use tikv_proto::tikvpb::batch_commands_request::Request as Entry;
        use tikv_proto::tikvpb::{BatchCommandsRequest, BatchCommandsResponse};

        let channel = tonic::transport::Endpoint::from_shared(format!("http://{store}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel();
        let (out, out_rx) = futures::channel::mpsc::unbounded::<BatchCommandsRequest>();
        let waiters: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>> = Arc::default();
        // An empty first message, so the call's headers come back.
        let _ = out.unbounded_send(BatchCommandsRequest::default());
        let mut answers = tikv_proto::tikvpb::tikv_client::TikvClient::new(channel)
            .batch_commands(out_rx)
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let senders = waiters.clone();
        tokio::spawn(async move {
            let mut next_id = 0u64;
            while let Some(first) = queued.recv().await {
                let mut batch = BatchCommandsRequest::default();
                let mut entries = vec![first];
                while entries.len() < 128 {
                    match queued.try_recv() {
                        Ok(entry) => entries.push(entry),
                        Err(_) => break,
                    }
                }
                {
                    let mut map = senders.lock().unwrap_or_else(|e| e.into_inner());
                    for (cmd, waiter) in entries {
                        next_id += 1;
                        map.insert(next_id, waiter);
                        batch.requests.push(Entry { cmd: Some(cmd) });
                        batch.request_ids.push(next_id);
                    }
                }
                if out.unbounded_send(batch).is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Ok(Some(BatchCommandsResponse { request_ids, .. })) = answers.message().await
            {
                let mut map = waiters.lock().unwrap_or_else(|e| e.into_inner());
                for id in request_ids {
                    if let Some(waiter) = map.remove(&id) {
                        let _ = waiter.send(());
                    }
                }
            }
        });
        Ok(Floor { queue, context: Arc::new(context) })
    }

    async fn call(&self, cmd: FloorCmd) -> bool {
        let (waiter, done) = tokio::sync::oneshot::channel();
        self.queue.send((cmd, waiter)).is_ok() && done.await.is_ok()
    }
}

/// Whose client the end-to-end section runs.
#[derive(Clone)]
enum E2eClient {
    Ours(tikv_tokio::RawClient),
    Floor(Floor),
}

impl E2eClient {
    async fn call(&self, op: &str, key: Vec<u8>, value: &Bytes) -> bool {
        match self {
            E2eClient::Ours(client) if op == "put" => client.put(key, value.clone()).await.is_ok(),
            E2eClient::Ours(client) => client.get(key).await.is_ok(),
            E2eClient::Floor(floor) => {
                let context = Some(kvrpcpb::Context::clone(&floor.context));
                let cmd = if op == "put" {
                    FloorCmd::RawPut(Box::new(kvrpcpb::RawPutRequest {
                        context,
                        key: key.into(),
                        value: value.clone(),
                        ..Default::default()
                    }))
                } else {
                    FloorCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
                        context,
                        key: key.into(),
                        ..Default::default()
                    }))
                };
                floor.call(cmd).await
            }
        }
    }
}

fn e2e_section(
    ops: u64,
    conc: usize,
    which: &[String],
    floor: bool,
) -> Result<Vec<E2eRow>, String> {
    let sim = start_sim()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let client = if floor {
            E2eClient::Floor(Floor::open(&sim.store, sim.context.clone()).await?)
        } else {
            let config = Config::default().with_pd_endpoints([sim.pd.clone()]);
            let client = tikv_tokio::RawClient::connect_with_config(config)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            E2eClient::Ours(client)
        };
        // The keys of `tikv-bench`'s workload, built per call by every client.
        let workload = tikv_bench::workload::Workload::default();
        let value = Bytes::from(vec![b'v'; 64]);
        let mut rows = Vec::new();
        for op in ["put", "get"].into_iter().filter(|op| which.iter().any(|w| w == op)) {
            let run = |per_task: u64| {
                let tasks: Vec<_> = (0..conc)
                    .map(|task| {
                        let client = client.clone();
                        let value = value.clone();
                        async move {
                            for i in 0..per_task {
                                if !client.call(op, workload.key(task, i), &value).await {
                                    return false;
                                }
                            }
                            true
                        }
                    })
                    .collect();
                futures::future::join_all(tasks)
            };
            // Warm-up: connections, streams, region cache, buffers.
            if !run(200).await.into_iter().all(|ok| ok) {
                return Err(format!("{op}: warm-up failed"));
            }
            let per_task = (ops / conc as u64).max(1);
            reset();
            counting(true);
            let all_ok = run(per_task).await.into_iter().all(|ok| ok);
            counting(false);
            if !all_ok {
                return Err(format!("{op}: an operation failed"));
            }
            let total = counts();
            let done = (per_task * conc as u64) as f64;
            rows.push(E2eRow {
                op,
                conc,
                allocs_per_op: total.allocs as f64 / done,
                bytes_per_op: total.bytes as f64 / done,
            });
        }
        Ok(rows)
    })
}

// ------------------------------------------------------------ main

struct Args {
    n: usize,
    e2e_ops: u64,
    conc: usize,
    ops: Vec<String>,
    core: Vec<String>,
    floor: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        n: 200_000,
        e2e_ops: 20_000,
        conc: 64,
        ops: vec!["put".into(), "get".into()],
        core: ["get", "put", "batch-get", "snapshot-get"].map(String::from).to_vec(),
        floor: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => args.n = value()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--e2e-ops" => {
                args.e2e_ops = value()?.parse().map_err(|e| format!("--e2e-ops: {e}"))?
            }
            "--conc" => args.conc = value()?.parse().map_err(|e| format!("--conc: {e}"))?,
            "--ops" => args.ops = value()?.split(',').map(str::to_owned).collect(),
            "--core" => args.core = value()?.split(',').map(str::to_owned).collect(),
            "--floor" => args.floor = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.n == 0 || args.conc == 0 {
        return Err("--n and --conc must be positive".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match core_section(args.n, &args.core) {
        Ok(rows) => {
            println!("core (sans-IO, {} rounds each)", args.n);
            println!("{:<26} {:>9} {:>10} {:>10}", "op", "ns/op", "allocs/op", "bytes/op");
            for r in &rows {
                println!(
                    "{:<26} {:>9.0} {:>10.2} {:>10.0}",
                    r.name, r.ns_per_op, r.allocs_per_op, r.bytes_per_op
                );
            }
            for r in &rows {
                println!("  {}: allocation sizes of one round: {:?}", r.name, r.trace);
            }
        }
        Err(e) => {
            eprintln!("core: {e}");
            return ExitCode::FAILURE;
        }
    }
    if args.e2e_ops > 0 {
        match e2e_section(args.e2e_ops, args.conc, &args.ops, args.floor) {
            Ok(rows) => {
                println!();
                println!(
                    "{} over BatchCommands, client thread only (tonic/hyper included)",
                    if args.floor { "the floor client" } else { "our tokio client" }
                );
                println!("{:<6} {:>5} {:>10} {:>10}", "op", "conc", "allocs/op", "bytes/op");
                for r in &rows {
                    println!(
                        "{:<6} {:>5} {:>10.2} {:>10.0}",
                        r.op, r.conc, r.allocs_per_op, r.bytes_per_op
                    );
                }
            }
            Err(e) => {
                eprintln!("tokio: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
