//! tikv-client 0.4's `RawClient` under `tikv-bench`'s workload
//! (`tikv_bench::workload`), for its side-by-side table.
//!
//! ```text
//! tikv-client-bench bench --pd ADDR [--ops get,put] [--conc 1,64,256] [--secs 3]
//!                         [--key-len 24] [--value-len 128] [--keys-per-task 64]
//! ```
//!
//! Connects to a running cluster (`tikv-bench` starts `tikv-sim` and runs
//! this program), runs every (op, concurrency) cell on a one-worker tokio
//! runtime, as our client runs in `tikv-bench`, and prints one `RESULT`
//! line per cell. tikv-client 0.4 sends unary calls (it has no batching).

use std::process::ExitCode;
use std::sync::Arc;

use tikv_bench::workload::{self, Op, Workload};
use tikv_client::RawClient;

struct Args {
    pd: String,
    ops: Vec<String>,
    conc: Vec<usize>,
    secs: f64,
    workload: Workload,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        pd: String::new(),
        ops: vec!["get".into(), "put".into()],
        conc: vec![1, 64, 256],
        secs: 3.0,
        workload: Workload::default(),
    };
    let mut it = std::env::args().skip(1).peekable();
    // The subcommand `tikv-bench` passes to every peer.
    if it.peek().map(String::as_str) == Some("bench") {
        it.next();
    }
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag}: {what} expected, got {value:?}");
        let list = || value.split(',').map(str::to_owned).collect::<Vec<_>>();
        match flag.as_str() {
            "--pd" => args.pd = value.clone(),
            "--ops" => args.ops = list(),
            "--conc" => {
                args.conc = list()
                    .iter()
                    .map(|c| c.parse())
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad("numbers"))?
            }
            "--secs" => args.secs = value.parse().map_err(|_| bad("a number"))?,
            "--key-len" => args.workload.key_len = value.parse().map_err(|_| bad("a number"))?,
            "--value-len" => {
                args.workload.value_len = value.parse().map_err(|_| bad("a number"))?
            }
            "--keys-per-task" => {
                args.workload.keys_per_task = value.parse().map_err(|_| bad("a number"))?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.pd.is_empty() {
        return Err("--pd is required".into());
    }
    if args.workload.key_len < Workload::MIN_KEY_LEN {
        return Err(format!("--key-len: at least {}", Workload::MIN_KEY_LEN));
    }
    if let Some(op) = args.ops.iter().find(|op| *op != "get" && *op != "put") {
        return Err(format!("unknown op {op}"));
    }
    Ok(args)
}

fn op(client: &RawClient, is_get: bool, w: Workload) -> Op {
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

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: tikv-client-bench bench --pd ADDR [--ops get,put] [--conc 1,64,256] [--secs S] [--key-len N] [--value-len N] [--keys-per-task N]"
            );
            return ExitCode::from(2);
        }
    };
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot start a tokio runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    rt.block_on(async {
        let client = match RawClient::new(vec![args.pd.clone()]).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("connect: {e}");
                return ExitCode::FAILURE;
            }
        };
        for op_name in &args.ops {
            for &conc in &args.conc {
                let op = op(&client, op_name == "get", args.workload);
                let result = workload::run(op, op_name, conc, args.secs).await;
                println!("{}", result.to_line());
            }
        }
        ExitCode::SUCCESS
    })
}
