//! The benchmarks' server: `tikv-sim` in a process of its own on core 1,
//! the benchmark on core 0, when `taskset` exists.

use std::process::{Child, Command, ExitCode, Stdio};

/// Set in the re-executed benchmark process, already pinned to core 0.
const PINNED_ENV: &str = "TIKV_BENCH_PINNED";

/// A running `tikv-sim`; killed when dropped.
pub struct SimProcess(Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `taskset` can pin processes to cores.
pub fn have_taskset() -> bool {
    Command::new("taskset").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Pins the benchmark to core 0: when `pinned` and this process is not the
/// pinned one yet, runs this program again under `taskset -c 0` and
/// returns its exit code (the caller returns it); otherwise `None`, and the
/// caller goes on.
pub fn rerun_on_core_0(pinned: bool) -> Option<ExitCode> {
    if !pinned || std::env::var_os(PINNED_ENV).is_some() {
        return None;
    }
    let status = Command::new("taskset")
        .arg("-c")
        .arg("0")
        .args(std::env::args_os())
        .env(PINNED_ENV, "1")
        .status();
    Some(match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// Starts `tikv-sim` (next to this binary, or `$TIKV_SIM`) with its PD on a
/// free port and `args`, on core 1 when `pinned`; returns it, its PD
/// address and the lines it printed before serving (store addresses).
pub fn start_sim(pinned: bool, args: &[&str]) -> Result<(SimProcess, String, Vec<String>), String> {
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
    cmd.args(["--pd", &pd]).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child =
        cmd.spawn().map_err(|e| format!("cannot start {} ({e}); build it first", sim.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let server = SimProcess(child);
    let mut printed = Vec::new();
    use std::io::BufRead;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        // `tikv-sim` prints its regions last, then serves.
        if line.starts_with("regions:") {
            return Ok((server, pd, printed));
        }
        printed.push(line);
    }
    Err("tikv-sim ended before serving".into())
}
