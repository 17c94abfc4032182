//! Checks the layering written down in the crate docs against the source:
//! every `crate::` path outside tests names a unit listed before the one
//! that uses it (or the unit itself), so modules form no import loop.

/// The units, lowest first, with their source files (tests excluded below).
const UNITS: &[(&str, &[&str])] = &[
    ("time", &[include_str!("time.rs")]),
    ("rng", &[include_str!("rng.rs")]),
    ("key", &[include_str!("key/mod.rs"), include_str!("key/memcomparable.rs")]),
    ("backoff", &[include_str!("backoff.rs")]),
    ("pd::timestamp", &[include_str!("pd/timestamp.rs")]),
    ("pd::state", &[include_str!("pd/state.rs")]),
    ("error", &[include_str!("error.rs")]),
    (
        "region",
        &[
            include_str!("region/mod.rs"),
            include_str!("region/cache.rs"),
            include_str!("region/health.rs"),
            include_str!("region/index.rs"),
            include_str!("region/lookups.rs"),
            include_str!("region/store.rs"),
            include_str!("region/ttl.rs"),
        ],
    ),
    ("lock::status", &[include_str!("lock/status.rs")]),
    (
        "rpc",
        &[
            include_str!("rpc/mod.rs"),
            include_str!("rpc/batch.rs"),
            include_str!("rpc/region_error.rs"),
            include_str!("rpc/tags.rs"),
        ],
    ),
    ("exec_details", &[include_str!("exec_details.rs")]),
    ("codec", &[include_str!("codec.rs")]),
    ("config", &[include_str!("config.rs")]),
    ("op", &[include_str!("op.rs")]),
    ("view", &[include_str!("view.rs")]),
    (
        "pd",
        &[
            include_str!("pd/mod.rs"),
            include_str!("pd/call.rs"),
            include_str!("pd/keyspace.rs"),
            include_str!("pd/locate.rs"),
            include_str!("pd/stores.rs"),
            include_str!("pd/tso.rs"),
        ],
    ),
    (
        "route",
        &[
            include_str!("route/mod.rs"),
            include_str!("route/sender.rs"),
            include_str!("route/fanout.rs"),
            include_str!("route/walk.rs"),
            include_str!("route/replica.rs"),
            include_str!("route/store_health.rs"),
        ],
    ),
    ("range_task", &[include_str!("range_task.rs")]),
    ("safe_ts", &[include_str!("safe_ts.rs")]),
    ("split", &[include_str!("split.rs")]),
    ("raw", &[include_str!("raw.rs")]),
    ("lock", &[include_str!("lock.rs")]),
    (
        "txn",
        &[
            include_str!("txn/mod.rs"),
            include_str!("txn/commit.rs"),
            include_str!("txn/membuffer.rs"),
            include_str!("txn/membuffer/arena.rs"),
            include_str!("txn/membuffer/art.rs"),
            include_str!("txn/membuffer/index.rs"),
            include_str!("txn/snapshot.rs"),
            include_str!("txn/union.rs"),
            include_str!("txn/pessimistic.rs"),
            include_str!("txn/fair_locking.rs"),
            include_str!("txn/pipelined.rs"),
            include_str!("txn/pipelined/commit.rs"),
            include_str!("txn/pipelined/broadcast.rs"),
        ],
    ),
    ("gc", &[include_str!("gc.rs")]),
];

/// The unit a `crate::` path names: the longest unit that prefixes it.
fn unit_of(path: &str) -> Option<usize> {
    UNITS
        .iter()
        .enumerate()
        .filter(|(_, (unit, _))| {
            path == *unit || path.strip_prefix(unit).is_some_and(|rest| rest.starts_with("::"))
        })
        .max_by_key(|(_, (unit, _))| unit.len())
        .map(|(i, _)| i)
}

/// The `crate::` paths (lower-case segments) in `source`, outside comments
/// and the trailing `#[cfg(test)]` module.
fn crate_paths(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]\nmod tests").next().unwrap_or(source);
    let mut paths = Vec::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let end = rest
                .find(|c: char| {
                    !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')
                })
                .unwrap_or(rest.len());
            paths.push(rest[..end].trim_end_matches(':').to_owned());
        }
    }
    // `use crate::{a, b}` names units inside braces.
    for group in code.split("use crate::{").skip(1) {
        let inner = group.split('}').next().unwrap_or("");
        paths.extend(
            inner.split(',').map(|p| p.trim().split("::{").next().unwrap_or("").to_owned()),
        );
    }
    paths
}

#[test]
fn layering_has_no_loop() {
    let mut wrong = Vec::new();
    for (rank, (unit, files)) in UNITS.iter().enumerate() {
        for source in *files {
            for path in crate_paths(source) {
                if let Some(used) = unit_of(&path)
                    && used > rank
                {
                    wrong.push(format!("{unit} uses crate::{path} ({})", UNITS[used].0));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "uses against the layering:\n{}", wrong.join("\n"));
}

#[test]
fn a_use_from_above_is_caught() {
    let view = unit_of("view").unwrap_or(0);
    let source = "use crate::route::fanout::KeyFanout;\nuse crate::{time, lock::Lock};\n";
    let used: Vec<_> = crate_paths(source).iter().filter_map(|p| unit_of(p)).collect();
    assert!(used.iter().any(|&u| u > view), "{used:?}");
    // The low part of a split module is its own unit.
    assert!(unit_of("lock::status::TxnStatusCache") < unit_of("view"));
    assert!(unit_of("lock::Lock") > unit_of("view"));
}
