//! `membuffer-mem`: the transaction buffer's bytes per key and insert time,
//! ours beside client-go's ART memdb (issue #19, item 5).
//!
//! ```text
//! cargo build --release -p tikv-bench
//! (cd tests/peer-client-go && go build -o ../../target/release/peer-client-go .)
//! target/release/membuffer-mem [--keys 1000000] [--sets seq,random] [--client-go target/release/peer-client-go]
//! ```
//!
//! Each key set writes `--keys` 24-byte keys with 64-byte values into one
//! empty [`MemBuffer`]: `seq` is a 16-byte prefix then the index big-endian,
//! in key order; `random` an 8-byte prefix then 16 pseudo-random bytes
//! (splitmix64), so inserts land all over the tree. Every value is its own
//! `Vec`, as a caller's would be, and stays owned by the buffer.
//!
//! A global allocator counts the bytes live in the process; the buffer's
//! resident bytes are the growth from before it was created to after the
//! last insert, and the table puts them beside its own accounting
//! ([`MemBuffer::mem`], the figure the pipelined flush thresholds compare)
//! and [`MemBuffer::size`] (keys plus values). client-go's runner, in its
//! `memdbbench` mode, writes the same keys and reports its memdb's `Mem()`,
//! `Size()` and the growth of Go's live heap after a collection.

// A global allocator implements the `unsafe` trait `GlobalAlloc`; this one
// only forwards to `System` and keeps a count of live bytes.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tikv_core::txn::membuffer::MemBuffer;

const KEY_LEN: usize = 24;
const VALUE_LEN: usize = 64;

/// Bytes allocated and not yet freed, over every thread.
static LIVE: AtomicUsize = AtomicUsize::new(0);

struct LiveBytes;

// SAFETY: every method forwards to `System` with the caller's arguments and
// adjusts an atomic counter, which never allocates.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

/// splitmix64's output function; client-go's runner has the same
/// (`memdbBenchMix`), so both sides write the same keys.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Key `i` of a set (client-go's `memdbBenchKey`).
fn key(set: &str, i: u64) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    if set == "seq" {
        k[..16].copy_from_slice(b"membuffer_bench_");
        k[16..].copy_from_slice(&i.to_be_bytes());
    } else {
        k[..8].copy_from_slice(b"membench");
        k[8..16].copy_from_slice(&mix(2 * i).to_be_bytes());
        k[16..].copy_from_slice(&mix(2 * i + 1).to_be_bytes());
    }
    k
}

/// One side's figures for one key set.
#[derive(Clone, Copy, Debug, Default)]
struct Row {
    keys: u64,
    /// The buffer's own accounting (`mem()`, client-go's `Mem()`).
    mem: u64,
    /// Keys plus values (`size()`, client-go's `Size()`).
    size: u64,
    /// Live heap growth: allocator count for ours, Go's `HeapAlloc` for
    /// client-go.
    heap: u64,
    insert_ns: u64,
}

fn ours(set: &str, n: u64) -> Row {
    let before = LIVE.load(Ordering::Relaxed);
    let mut buf = MemBuffer::new();
    let start = Instant::now();
    for i in 0..n {
        let mut value = vec![0u8; VALUE_LEN];
        value[0] = i as u8;
        if let Err(e) = buf.set(&key(set, i), value) {
            panic!("membuffer refused key {i}: {e}");
        }
    }
    let took = start.elapsed();
    let heap = LIVE.load(Ordering::Relaxed) - before;
    let row = Row {
        keys: buf.len() as u64,
        mem: buf.mem() as u64,
        size: buf.size() as u64,
        heap: heap as u64,
        insert_ns: (took.as_nanos() / u128::from(n.max(1))) as u64,
    };
    drop(buf);
    row
}

fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace().find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

fn client_go(path: &str, sets: &str, n: u64) -> Result<Vec<(String, Row)>, String> {
    let out = Command::new(path)
        .args(["memdbbench", "--keys", &n.to_string(), "--sets", sets])
        .output()
        .map_err(|e| format!("cannot run {path}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{path} memdbbench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(rest) = line.strip_prefix("RESULT ") else { continue };
        let set = rest
            .split_whitespace()
            .find_map(|f| f.strip_prefix("set="))
            .ok_or_else(|| format!("no set in {line:?}"))?;
        let get = |name| field(rest, name).ok_or_else(|| format!("no {name} in {line:?}"));
        rows.push((
            set.to_string(),
            Row {
                keys: get("keys")?,
                mem: get("mem")?,
                size: get("size")?,
                heap: get("heap")?,
                insert_ns: get("insert_ns")?,
            },
        ));
    }
    Ok(rows)
}

fn per_key(bytes: u64, keys: u64) -> f64 {
    bytes as f64 / keys.max(1) as f64
}

fn main() -> ExitCode {
    let mut keys = 1_000_000u64;
    let mut sets = "seq,random".to_string();
    let mut go = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            eprintln!("{flag} needs a value");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--keys" => match value.parse() {
                Ok(n) => keys = n,
                Err(_) => {
                    eprintln!("--keys: not a number");
                    return ExitCode::from(2);
                }
            },
            "--sets" => sets = value,
            "--client-go" => go = Some(value),
            _ => {
                eprintln!(
                    "unknown flag {flag}\nusage: membuffer-mem [--keys N] [--sets seq,random] [--client-go PATH_TO_peer-client-go]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let names: Vec<&str> = sets.split(',').collect();
    if let Some(bad) = names.iter().find(|s| !matches!(**s, "seq" | "random")) {
        eprintln!("unknown key set {bad:?}");
        return ExitCode::from(2);
    }
    let theirs = match &go {
        Some(path) => match client_go(path, &sets, keys) {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => Vec::new(),
    };
    println!(
        "{keys} keys of {KEY_LEN} bytes, values of {VALUE_LEN} bytes; bytes per key (B/key) and insert time"
    );
    println!();
    println!(
        "| key set | ours heap B/key | ours mem() B/key | client-go heap B/key | client-go Mem() B/key | heap ours ÷ client-go | mem ours ÷ client-go | ours insert ns/key | client-go insert ns/key |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for set in names {
        let o = ours(set, keys);
        let g = theirs.iter().find(|(s, _)| s == set).map(|(_, r)| *r);
        let cell = |f: &dyn Fn(Row) -> String| g.map_or_else(|| "-".to_string(), f);
        println!(
            "| {set} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
            per_key(o.heap, o.keys),
            per_key(o.mem, o.keys),
            cell(&|g| format!("{:.1}", per_key(g.heap, g.keys))),
            cell(&|g| format!("{:.1}", per_key(g.mem, g.keys))),
            cell(&|g| format!("{:.2}", per_key(o.heap, o.keys) / per_key(g.heap, g.keys))),
            cell(&|g| format!("{:.2}", per_key(o.mem, o.keys) / per_key(g.mem, g.keys))),
            o.insert_ns,
            cell(&|g| g.insert_ns.to_string()),
        );
        if let Some(g) = g
            && (g.size != o.size || g.keys != o.keys)
        {
            eprintln!(
                "{set}: the two buffers differ: ours {} keys, size {}; client-go {} keys, size {}",
                o.keys, o.size, g.keys, g.size
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
