//! Other clients in their own processes, for the side-by-side table.
//!
//! A peer is a program that runs [`crate::workload`] itself and prints one
//! [`CellResult`] line per cell:
//! - `client-go`: `tests/peer-client-go` (`peer-client-go bench ...`),
//!   client-go's rawkv client with its default configuration (BatchCommands
//!   on);
//! - `tikv-client`: `tests/peer-tikv-client`'s `tikv-client-bench` bin,
//!   tikv-client 0.4's `RawClient` (unary calls; it has no batching).
//!
//! Both take the same arguments (`bench --pd ADDR --ops get,put --conc
//! 1,64,256 --secs S --key-len N --value-len N --keys-per-task N`). A peer
//! process inherits this process's CPU affinity (core 0 when pinned). Each
//! peer runs once for all cells, on first use, and its results are kept.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::workload::{CellResult, Workload};

/// The peer modes, in table order.
pub const PEER_MODES: [&str; 2] = ["client-go", "tikv-client"];

/// What every peer run shares.
#[derive(Clone, Debug)]
pub struct PeerPlan {
    /// PD address of the cluster.
    pub pd: String,
    /// Operations (`get`, `put`).
    pub ops: Vec<String>,
    /// Concurrencies.
    pub conc: Vec<usize>,
    /// Measured seconds per cell.
    pub secs: f64,
    /// Keys and values.
    pub workload: Workload,
}

/// Runs peers on demand and keeps their results.
#[derive(Debug)]
pub struct Peers {
    plan: PeerPlan,
    bins: HashMap<&'static str, PathBuf>,
    results: HashMap<&'static str, Vec<CellResult>>,
}

impl Peers {
    /// Peers run with `plan`; `bins` maps a peer mode to its program.
    pub fn new(plan: PeerPlan, bins: HashMap<&'static str, PathBuf>) -> Peers {
        Peers { plan, bins, results: HashMap::new() }
    }

    /// The result of one cell of peer `mode`, running the peer (all cells)
    /// the first time it is asked for.
    pub async fn cell(&mut self, mode: &str, op: &str, conc: usize) -> Result<CellResult, String> {
        let mode = PEER_MODES
            .into_iter()
            .find(|m| *m == mode)
            .ok_or_else(|| format!("{mode} is not a peer"))?;
        if !self.results.contains_key(mode) {
            let bin =
                self.bins.get(mode).cloned().ok_or_else(|| format!("no program for {mode}"))?;
            let plan = self.plan.clone();
            eprintln!("# running {mode} ({}) for every cell", bin.display());
            let results = tokio::task::spawn_blocking(move || run_peer(&bin, &plan))
                .await
                .map_err(|e| format!("{mode}: {e}"))??;
            self.results.insert(mode, results);
        }
        self.results[mode]
            .iter()
            .find(|r| r.op == op && r.conc == conc)
            .cloned()
            .ok_or_else(|| format!("{mode} reported no result for {op} at {conc}"))
    }
}

/// Runs one peer program for every cell of `plan` and collects its lines.
fn run_peer(bin: &PathBuf, plan: &PeerPlan) -> Result<Vec<CellResult>, String> {
    let list = |v: &[String]| v.join(",");
    let conc: Vec<String> = plan.conc.iter().map(usize::to_string).collect();
    let mut child = Command::new(bin)
        .arg("bench")
        .args(["--pd", &plan.pd])
        .args(["--ops", &list(&plan.ops)])
        .args(["--conc", &list(&conc)])
        .args(["--secs", &plan.secs.to_string()])
        .args(["--key-len", &plan.workload.key_len.to_string()])
        .args(["--value-len", &plan.workload.value_len.to_string()])
        .args(["--keys-per-task", &plan.workload.keys_per_task.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {} ({e}); build it first", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut results = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        match CellResult::parse_line(&line) {
            Some(r) => results.push(r),
            None => eprintln!("# {}: {line}", bin.display()),
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("{} exited with {status}", bin.display()));
    }
    Ok(results)
}

/// One row of the main table, kept for the ratios.
#[derive(Clone, Debug)]
pub struct Row {
    /// The mode that produced it.
    pub mode: String,
    /// What it measured.
    pub result: CellResult,
}

/// The ratio table: for each cell and each of our modes (`batch`,
/// `unary`), our ops/s and CPU/op divided by each peer's and by the floor
/// of the same transport (`floor-stream` for `batch`, `floor-unary` for
/// `unary`), from the same run. Empty when there is nothing to compare.
pub fn ratio_table(rows: &[Row]) -> String {
    let find = |op: &str, conc: usize, mode: &str| {
        rows.iter().find(|r| r.mode == mode && r.result.op == op && r.result.conc == conc)
    };
    let mut cells: Vec<(String, usize)> = Vec::new();
    for r in rows {
        let cell = (r.result.op.clone(), r.result.conc);
        if !cells.contains(&cell) {
            cells.push(cell);
        }
    }
    let ratio = |ours: &CellResult, other: Option<&Row>| match other {
        Some(o) if o.result.ops > 0 && ours.ops > 0 => format!(
            "{:.2} | {:.2}",
            ours.ops_per_sec() / o.result.ops_per_sec(),
            ours.cpu_us_per_op() / o.result.cpu_us_per_op()
        ),
        _ => "– | –".to_owned(),
    };
    let mut out = String::new();
    for (op, conc) in cells {
        for (ours, floor) in [("batch", "floor-stream"), ("unary", "floor-unary")] {
            let Some(mine) = find(&op, conc, ours) else { continue };
            let others = [
                find(&op, conc, "client-go"),
                find(&op, conc, "tikv-client"),
                find(&op, conc, floor),
            ];
            if others.iter().all(Option::is_none) {
                continue;
            }
            let [go, rust, fl] = others.map(|o| ratio(&mine.result, o));
            out.push_str(&format!("| {op} | {conc} | {ours} | {go} | {rust} | {fl} |\n"));
        }
    }
    if out.is_empty() {
        return out;
    }
    format!(
        "| op | conc | ours | ops/s ÷ client-go | CPU/op ÷ client-go | ops/s ÷ tikv-client | CPU/op ÷ tikv-client | ops/s ÷ floor | CPU/op ÷ floor |\n|---|---|---|---|---|---|---|---|---|\n{out}"
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn row(mode: &str, op: &str, conc: usize, ops: u64, cpu_ms: u64) -> Row {
        Row {
            mode: mode.into(),
            result: CellResult {
                op: op.into(),
                conc,
                ops,
                errors: 0,
                elapsed: Duration::from_secs(1),
                cpu: Duration::from_millis(cpu_ms),
                p50_us: 100,
                p99_us: 200,
                peak_rss_kib: 0,
            },
        }
    }

    #[test]
    fn ratios_compare_ours_with_peers_and_the_matching_floor() {
        let rows = vec![
            row("floor-stream", "get", 64, 40_000, 400),
            row("client-go", "get", 64, 10_000, 500),
            row("batch", "get", 64, 20_000, 400),
            row("unary", "get", 64, 5_000, 250),
        ];
        let table = ratio_table(&rows);
        // batch: 2x client-go's ops/s at 0.4x its CPU/op; half the floor's
        // ops/s at twice its CPU/op; no tikv-client row.
        assert!(
            table.contains("| get | 64 | batch | 2.00 | 0.40 | – | – | 0.50 | 2.00 |"),
            "{table}"
        );
        // unary: no floor-unary in this run.
        assert!(table.contains("| get | 64 | unary | 0.50 | 1.00 | – | – | – | – |"), "{table}");
        assert_eq!(ratio_table(&rows[2..3]), "");
    }
}
