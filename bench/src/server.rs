//! The benchmark's server processes: `tikv-echo` (canned answers, the
//! ceiling) and `tikv-sim` (the MVCC model), each pinned to core 1 when
//! `taskset` is available, with their CPU time and `BatchCommands` traffic.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// The servers a run can use (`--servers`): `echo` (`tikv-echo`), `sim`
/// (`tikv-sim`, one store) and `sim-faults` (`tikv-sim`, 3 stores and 3
/// regions, 10 % of requests answered `NotLeader` or `EpochNotMatch`:
/// benchmark B9; `ServerIsBusy` is left out because client-go's 2 s
/// `BoTiKVServerBusy` backoff, which we follow, turns any share of it into
/// a latency test).
pub const SERVERS: [&str; 3] = ["echo", "sim", "sim-faults"];

/// What a server reports about its traffic so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// `BatchCommandsRequest` messages received.
    pub messages: u64,
    /// Entries in them.
    pub entries: u64,
    /// TiKV requests that came as unary calls (`tikv-sim` only).
    pub kv_unary: Option<u64>,
    /// Unary PD requests served (`tikv-sim` only).
    pub pd_unary: Option<u64>,
    /// Keys holding a lock at the time of the question (`tikv-sim` only).
    pub locks: Option<u64>,
}

impl ServerStats {
    /// The traffic between `self` (earlier) and `later`.
    pub fn delta(self, later: ServerStats) -> ServerStats {
        ServerStats {
            messages: later.messages.saturating_sub(self.messages),
            entries: later.entries.saturating_sub(self.entries),
            kv_unary: later.kv_unary.zip(self.kv_unary).map(|(l, e)| l.saturating_sub(e)),
            pd_unary: later.pd_unary.zip(self.pd_unary).map(|(l, e)| l.saturating_sub(e)),
            locks: later.locks,
        }
    }
}

/// A server process (`tikv-echo` or `tikv-sim`), killed on drop.
pub struct Server {
    child: Child,
    /// Kept open: `stats` requests go here (and `tikv-echo` serves until it
    /// closes).
    stdin: Option<ChildStdin>,
    /// The server's stdout, line by line, from a reader thread.
    lines: std::sync::mpsc::Receiver<String>,
    /// PD's address.
    pub pd: String,
    /// Store 1's address.
    pub store: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `taskset` can pin processes to cores here.
pub fn have_taskset() -> bool {
    Command::new("taskset").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

impl Server {
    /// Starts server `kind` (one of [`SERVERS`]) next to this binary (or at
    /// `$TIKV_ECHO` / `$TIKV_SIM`) with `--pd ADDR` and `args`, on core 1
    /// when `pinned`.
    pub fn start(kind: &str, args: &[&str], pinned: bool) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let (bin, env) =
            if kind == "echo" { ("tikv-echo", "TIKV_ECHO") } else { ("tikv-sim", "TIKV_SIM") };
        let path =
            std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| exe.with_file_name(bin));
        // The server binds a free port itself and prints it: a port probed
        // here and handed over could be taken by another socket meanwhile.
        let pd = "127.0.0.1:0";
        let mut cmd = if pinned {
            let mut c = Command::new("taskset");
            c.arg("-c").arg("1").arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(["--pd", pd]).args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {} ({e}); build it first", path.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server { child, stdin, lines, pd: String::new(), store: String::new() };
        loop {
            let line = server
                .lines
                .recv_timeout(Duration::from_secs(30))
                .map_err(|_| format!("{bin} did not print its addresses"))?;
            if let Some(addr) = line.strip_prefix("store 1: ") {
                server.store = addr.to_owned();
            }
            // tikv-sim names its first PD member `pd 0`, tikv-echo its PD `pd`.
            if let Some(addr) = line.strip_prefix("pd 0: ").or_else(|| line.strip_prefix("pd: ")) {
                server.pd = addr.to_owned();
            }
            if line.starts_with("regions:") {
                break;
            }
        }
        if server.store.is_empty() || server.pd.is_empty() {
            return Err(format!("{bin} did not print its PD and store addresses"));
        }
        Ok(server)
    }

    /// The server process's CPU time so far.
    pub fn cpu(&self) -> Duration {
        crate::workload::process_cpu_time(self.child.id())
    }

    /// Sends `tikv-sim` a stdin command (`latency STORE MS`, `black-hole
    /// STORE on|off`, `leaders`) and returns its answer line: the one that
    /// starts with the command's first word.
    pub fn command(&mut self, line: &str) -> Result<String, String> {
        let stdin = self.stdin.as_mut().ok_or("the server's stdin is closed")?;
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).map_err(|e| e.to_string())?;
        let word = line.split_whitespace().next().unwrap_or_default();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let answer =
                self.lines.recv_timeout(left).map_err(|_| format!("no answer to {line:?}"))?;
            if answer.starts_with("store command refused") {
                return Err(format!("{line:?}: {answer}"));
            }
            if answer.split_whitespace().next() == Some(word) {
                return Ok(answer);
            }
        }
    }

    /// Its traffic so far; `None` when it does not answer.
    pub fn stats(&mut self) -> Option<ServerStats> {
        let stdin = self.stdin.as_mut()?;
        writeln!(stdin, "stats").ok()?;
        stdin.flush().ok()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            let Some(rest) = line.strip_prefix("stats ") else { continue };
            let field = |name: &str| {
                rest.split_whitespace()
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
            };
            return Some(ServerStats {
                messages: field("messages")?,
                entries: field("entries")?,
                kv_unary: field("kv_unary"),
                pd_unary: field("pd_unary"),
                locks: field("locks"),
            });
        }
    }
}

/// Re-runs this process on core 0 (the server gets core 1) when `taskset`
/// is available and this is not already the pinned run: `Some(success)`
/// is the pinned run's outcome, `None` means carry on here; the second
/// value says whether this run is pinned.
pub fn pin_to_core_0() -> (Option<bool>, bool) {
    let pinned = have_taskset();
    if pinned && std::env::var_os("TIKV_BENCH_PINNED").is_none() {
        let status = Command::new("taskset")
            .arg("-c")
            .arg("0")
            .args(std::env::args_os())
            .env("TIKV_BENCH_PINNED", "1")
            .status();
        return (Some(matches!(status, Ok(s) if s.success())), pinned);
    }
    (None, pinned)
}

/// A benchmark's `main` after argument parsing: pins this process to core 0
/// ([`pin_to_core_0`]), runs `bench(pinned)` on a one-worker tokio runtime
/// (the client side of every benchmark here), and turns its outcome into
/// the exit code, printing the error.
pub fn run_on_client_core<F>(bench: impl FnOnce(bool) -> F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), String>>,
{
    use std::process::ExitCode;
    let (pinned_run, pinned) = pin_to_core_0();
    if let Some(ok) = pinned_run {
        return if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot start the tokio runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    match rt.block_on(bench(pinned)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
