//! `tikv-echo`: the echo cluster (`tikv_sim::echo`: canned answers, no
//! work) in its own process, the ceiling `tikv-bench --servers echo` measures.
//!
//! ```text
//! tikv-echo --pd 127.0.0.1:2379 [--value-len 64]
//! ```
//!
//! Prints `store 1: ADDR` and then `regions: 1` (the lines `tikv-sim`
//! prints, so the benchmark starts either the same way), then serves until
//! stdin closes. Each `stats` line read from stdin is answered on stdout with
//! `stats streams=S messages=M entries=E`: the `BatchCommands` traffic so far.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use tikv_sim::echo::{EchoServer, STORE_ID};

fn main() -> ExitCode {
    let mut pd: Option<SocketAddr> = None;
    let mut value_len = 64usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--pd", Some(v)) if v.parse::<SocketAddr>().is_ok() => pd = v.parse().ok(),
            ("--value-len", Some(v)) if v.parse::<usize>().is_ok() => {
                value_len = v.parse().unwrap_or(value_len)
            }
            _ => {
                eprintln!("usage: tikv-echo --pd HOST:PORT [--value-len N]");
                return ExitCode::from(2);
            }
        }
    }
    let pd = pd.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match rt.block_on(EchoServer::start(pd, value_len)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("pd: {}", server.pd);
    println!("store {STORE_ID}: {}", server.store);
    println!("regions: 1");
    // Serve until stdin closes (the benchmark exits or kills us).
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "stats" {
            let (streams, messages, entries) = server.counters.snapshot();
            let _ =
                writeln!(stdout, "stats streams={streams} messages={messages} entries={entries}");
            let _ = stdout.flush();
        }
    }
    ExitCode::SUCCESS
}
