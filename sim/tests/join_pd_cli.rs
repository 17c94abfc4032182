//! The `tikv-sim --join-pd` binary against a real PD ([`tikv_sim::real_pd`]),
//! as the checks outside this repository run it: three stores come up in
//! PD, `--regions` pre-splits through PD, and a `split HEX` line on stdin
//! splits once more. The library behind it is tested in depth by
//! `tests/tests/join_pd.rs`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tikv_sim::real_pd::{RealPd, get_json};

/// The simulator process, killed when dropped.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn regions(pd: &str) -> Vec<String> {
    let json = get_json(pd, "/pd/api/v1/regions");
    let mut starts: Vec<String> =
        json.get("regions").items().iter().map(|r| r.get("start_key").str().to_owned()).collect();
    starts.sort();
    starts
}

#[test]
fn the_binary_joins_a_real_pd() {
    let pd = RealPd::start();
    let mut sim = Sim(Command::new(env!("CARGO_BIN_EXE_tikv-sim"))
        .args(["--join-pd", pd.addr(), "--stores", "3", "--regions", "2", "--txn"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tikv-sim"));
    let mut out = BufReader::new(sim.0.stdout.take().expect("stdout"));
    let mut stores = Vec::new();
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).expect("read stdout") > 0, "tikv-sim exited early");
        if let Some(rest) = line.strip_prefix("store ") {
            stores.push(rest.trim().to_owned());
        }
        if line.trim() == "ready" {
            break;
        }
    }
    assert_eq!(stores.len(), 3, "{stores:?}");

    let deadline = Instant::now() + Duration::from_secs(20);
    // `--regions 2 --txn` split at the memcomparable form of byte 0x80.
    let presplit = "8000000000000000F8".to_owned();
    loop {
        let json = get_json(pd.addr(), "/pd/api/v1/stores");
        let up: Vec<String> = json
            .get("stores")
            .items()
            .iter()
            .filter(|s| s.get("store").get("state_name").str() == "Up")
            .map(|s| {
                let store = s.get("store");
                format!("{}: {}", store.get("id").u64(), store.get("address").str())
            })
            .collect();
        let mut sorted_up = up.clone();
        sorted_up.sort();
        let mut sorted_stores = stores.clone();
        sorted_stores.sort();
        if sorted_up == sorted_stores && regions(pd.addr()).contains(&presplit) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PD sees stores {up:?}, regions {:?}",
            regions(pd.addr())
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A store-initiated split from stdin, at the memcomparable form of "k".
    let key = "6B00000000000000F8";
    let mut stdin = sim.0.stdin.take().expect("stdin");
    writeln!(stdin, "split {key}").expect("write stdin");
    let mut answer = String::new();
    out.read_line(&mut answer).expect("read the answer");
    assert!(answer.starts_with("split ok "), "{answer}");
    loop {
        if regions(pd.addr()).iter().any(|s| s == key) {
            break;
        }
        assert!(Instant::now() < deadline, "PD never saw the split: {:?}", regions(pd.addr()));
        std::thread::sleep(Duration::from_millis(100));
    }
    writeln!(stdin, "split zz").expect("write stdin");
    let mut refused = String::new();
    out.read_line(&mut refused).expect("read the answer");
    assert!(refused.starts_with("split refused"), "{refused}");
    drop(sim);
    drop(pd);
}
