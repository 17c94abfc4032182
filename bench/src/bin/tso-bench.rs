//! `tso-bench` (B8): concurrent `get_timestamp` callers against a PD whose
//! `Tso` answers take a set latency, at several TSO pipelining depths
//! (`Config::tso_max_rounds_in_flight`) side by side in one run.
//!
//! ```text
//! cargo build --release -p tikv-sim -p tikv-bench
//! target/release/tso-bench [--secs 2] [--conc 1,64,1024] [--depths 1,4] [--runs 3] [--latency-us 500]
//! ```
//!
//! The simulated cluster (`tikv-sim --tso-latency-us`) runs in its own
//! process on core 1 and this client on core 0 when `taskset` is available.
//! Each cell is `conc` tasks calling `TransactionClient::current_timestamp`
//! in a loop (`tikv_bench::workload::run`: warm-up, then the measured
//! window). The client's transport is wrapped to record every `Tso` round
//! it sends, which gives rounds per second and the batch-size
//! distribution. Every cell runs `--runs` times, interleaved; the table
//! reports the median of each metric.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use futures::future::BoxFuture;
use tikv_bench::server::{Server, run_on_client_core};
use tikv_bench::workload::{self, Op, percentile};
use tikv_core::Error;
use tikv_core::config::Config;
use tikv_core::rpc::{PdRequest, Request, Response, RpcError, Target};
use tikv_core::time::Instant;
use tikv_driver::{Platform, Transport};
use tikv_tokio::{GrpcTransport, TokioRuntime};

/// Batch sizes of the `Tso` rounds sent while recording.
static ROUNDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static RECORDING: AtomicBool = AtomicBool::new(false);

/// The tokio transport, recording the size of every `Tso` round.
struct Recording(GrpcTransport);

impl Transport for Recording {
    fn call(
        &self,
        target: &Target,
        request: Request,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        if let Request::Pd(PdRequest::Tso(r)) = &request
            && RECORDING.load(Ordering::Relaxed)
        {
            ROUNDS.lock().unwrap_or_else(PoisonError::into_inner).push(r.count);
        }
        self.0.call(target, request, deadline)
    }
}

/// The tokio platform with the recording transport.
struct Recorded;

impl Platform for Recorded {
    type Runtime = TokioRuntime;
    type Transport = Recording;

    fn build(config: &Config) -> Result<(TokioRuntime, Recording), Error> {
        let transport = GrpcTransport::new(config.transport.clone());
        Ok((TokioRuntime::new(), Recording(transport)))
    }
}

struct Args {
    secs: f64,
    conc: Vec<usize>,
    depths: Vec<usize>,
    runs: usize,
    latency_us: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args =
        Args { secs: 2.0, conc: vec![1, 64, 1024], depths: vec![1, 4], runs: 3, latency_us: 500 };
    let mut it = std::env::args().skip(1);
    let list = |v: &str| -> Result<Vec<usize>, String> {
        v.split(',').map(|x| x.parse().map_err(|_| format!("bad number {x:?}"))).collect()
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--secs" => args.secs = value.parse().map_err(|_| "bad --secs")?,
            "--conc" => args.conc = list(&value)?,
            "--depths" => args.depths = list(&value)?,
            "--runs" => args.runs = value.parse().map_err(|_| "bad --runs")?,
            "--latency-us" => args.latency_us = value.parse().map_err(|_| "bad --latency-us")?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// One cell's measurements.
#[derive(Clone, Copy, Debug, Default)]
struct Cell {
    calls_per_s: f64,
    rounds_per_s: f64,
    batch_mean: f64,
    batch_p50: f64,
    batch_p99: f64,
    p50_us: f64,
    p99_us: f64,
    errors: f64,
}

async fn measure(pd: &str, conc: usize, depth: usize, secs: f64) -> Result<Cell, String> {
    let config = Config::default().with_pd_endpoints([pd]).with_tso_max_rounds_in_flight(depth);
    let client = tikv_driver::TransactionClient::<Recorded>::connect_with_config(config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let op: Op = {
        let client = client.clone();
        Arc::new(move |_, _| {
            let client = client.clone();
            async move { client.current_timestamp().await.is_ok() }.boxed()
        })
    };
    // Rounds are recorded over the cell's whole run (warm-up included) and
    // scaled by its length: the measured window is most of it.
    ROUNDS.lock().unwrap_or_else(PoisonError::into_inner).clear();
    RECORDING.store(true, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let result = workload::run(op, "tso", conc, secs).await;
    let whole = started.elapsed();
    RECORDING.store(false, Ordering::Relaxed);
    let mut sizes = std::mem::take(&mut *ROUNDS.lock().unwrap_or_else(PoisonError::into_inner));
    sizes.sort_unstable();
    let total: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
    Ok(Cell {
        calls_per_s: result.ops as f64 / result.elapsed.as_secs_f64(),
        rounds_per_s: sizes.len() as f64 / whole.as_secs_f64(),
        batch_mean: total as f64 / sizes.len().max(1) as f64,
        batch_p50: f64::from(percentile(&sizes, 0.50)),
        batch_p99: f64::from(percentile(&sizes, 0.99)),
        p50_us: f64::from(result.p50_us),
        p99_us: f64::from(result.p99_us),
        errors: result.errors as f64,
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

async fn bench(args: &Args, pd: &str) -> Result<(), String> {
    // cells[c][d] holds one Cell per run.
    let mut cells = vec![vec![Vec::new(); args.depths.len()]; args.conc.len()];
    for run in 1..=args.runs {
        for (ci, &conc) in args.conc.iter().enumerate() {
            for (di, &depth) in args.depths.iter().enumerate() {
                let cell = measure(pd, conc, depth, args.secs).await?;
                eprintln!("run {run} conc {conc} depth {depth}: {cell:?}");
                cells[ci][di].push(cell);
            }
        }
    }
    println!(
        "\n| callers | depth | calls/s | TSO rounds/s | batch mean | batch p50 | batch p99 | call p50 µs | call p99 µs | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (ci, &conc) in args.conc.iter().enumerate() {
        for (di, &depth) in args.depths.iter().enumerate() {
            let runs = &cells[ci][di];
            let m = |f: fn(&Cell) -> f64| median(runs.iter().map(f).collect());
            println!(
                "| {conc} | {depth} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                m(|c| c.calls_per_s),
                m(|c| c.rounds_per_s),
                m(|c| c.batch_mean),
                m(|c| c.batch_p50),
                m(|c| c.batch_p99),
                m(|c| c.p50_us),
                m(|c| c.p99_us),
                m(|c| c.errors),
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: tso-bench [--secs S] [--conc 1,64,1024] [--depths 1,4] [--runs 3] [--latency-us 500]"
            );
            return ExitCode::from(2);
        }
    };
    run_on_client_core(|pinned| async move {
        let latency = args.latency_us.to_string();
        let sim_args = ["--stores", "1", "--txn", "--tso-latency-us", latency.as_str()];
        let server = Server::start("sim", &sim_args, pinned)?;
        println!(
            "B8 TSO: PD answer latency {} µs, {} s per cell, median of {} runs{}",
            args.latency_us,
            args.secs,
            args.runs,
            if pinned { ", client on core 0, tikv-sim on core 1" } else { ", unpinned" }
        );
        let result = bench(&args, &server.pd).await;
        drop(server);
        result
    })
}
