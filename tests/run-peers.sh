#!/usr/bin/env bash
# Runs the peer clients against the simulated cluster:
#  1. tikv-client 0.4 (tests/peer-tikv-client: its own workspace and lock
#     file; it starts its simulated clusters in-process; later also against
#     the real PD below, `--pd`);
#  2. Go's client-go v2 (tests/peer-client-go), against `tikv-sim`
#     processes started here: one API V1 cluster for the raw and the txn
#     checks (it serves both key spaces, as TiKV does) and one with TTL
#     enabled (`--enable-ttl`); then again against a real PD (`../shared/pd`
#     beside the checkout, started once by `real-pd`, stopped by pid at
#     exit) with `tikv-sim --join-pd` stores, client-go running as it ships
#     (router client, etcd safe-point KV: `--real-pd`);
#  3. our tokio examples (`--pd`) against the real PD and joined stores;
#  4. our client and client-go on one cluster (`interop-client-go` of the
#     tikv-tests crate: it serves the cluster in its own process and drives
#     the Go program's `interop` step server), then again with its stores
#     joined to a real PD of its own (`--real-pd`);
#  5. a smoke run of the side-by-side, transactional, contended-counter,
#     YCSB, slow-store and membuffer benchmarks (debug builds, a fraction of
#     a second per cell: it checks that every client's runner works, and
#     that the counters add up, not how fast it is; the benchmarks
#     themselves are bench/side-by-side.sh, which runs each of them in
#     release).
# Needs cargo and go; Go modules come from the Go module proxy (go.sum pins
# them). Exits non-zero if any peer check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

echo "--- tikv-client 0.4"
# Both bins of that workspace in one build: the checks, and tikv-client's
# runner for the benchmark smoke run below.
cargo build --locked --manifest-path tests/peer-tikv-client/Cargo.toml --bins
"$CARGO_TARGET_DIR/debug/peer-tikv-client"

echo "--- client-go"
if ! command -v go >/dev/null 2>&1; then
  echo "go not found: the client-go peer needs the Go toolchain" >&2
  exit 1
fi
pd_dir="$root/../shared/pd"
if [ ! -f "$pd_dir/start-pd.sh" ]; then
  echo "the real PD is missing: expected $pd_dir/start-pd.sh (shared/ beside the checkout)" >&2
  exit 1
fi
cargo build --locked -p tikv-sim --bin tikv-sim --bin tikv-echo --bin real-pd \
  -p tikv-tests --bin interop-client-go -p tikv-bench --bin tikv-bench --bin txn-contention --bin txn-bench \
  --bin ycsb-bench --bin slow-store-bench --bin membuffer-mem
sim="$CARGO_TARGET_DIR/debug/tikv-sim"

logdir=$(mktemp -d)
pids=()
pd_pid=""
pd_data=""
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$pd_pid" ]; then
    kill "$pd_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pd_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pd_pid" 2>/dev/null || true
  fi
  if [ -n "$pd_data" ]; then
    rm -rf "$pd_data" "$pd_data.log" "$pd_data.stdout" "$pd_data.pid"
  fi
  rm -rf "$logdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts one simulator on a free port (in this shell, so that the cleanup
# above knows its pid).
start_sim() {
  local name=$1; shift
  "$sim" --pd 127.0.0.1:0 --stores 3 --regions 4 "$@" >"$logdir/$name.log" 2>&1 &
  pids+=($!)
}

# Waits until a simulator serves; prints its PD address.
sim_pd_addr() {
  local name=$1 pid=$2
  for _ in $(seq 1 200); do
    if grep -q '^ready' "$logdir/$name.log"; then
      sed -n 's/^pd 0: //p' "$logdir/$name.log"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  echo "tikv-sim ($name) did not start:" >&2
  cat "$logdir/$name.log" >&2
  return 1
}

# One PD for the whole script (about a second to start); `real-pd` prints
# `addr=... pid=... data=...` and leaves it running for the cleanup above.
pd_line=$("$CARGO_TARGET_DIR/debug/real-pd")
pd_pid=$(sed -n 's/.* pid=\([0-9]*\).*/\1/p' <<<"$pd_line")
pd_data=$(sed -n 's/.* data=\(.*\)$/\1/p' <<<"$pd_line")
real_pd=$(sed -n 's/^addr=\([^ ]*\).*/\1/p' <<<"$pd_line")
if [ -z "$pd_pid" ] || [ -z "$real_pd" ]; then
  echo "real-pd did not start PD: $pd_line" >&2
  exit 1
fi

start_sim v1
start_sim ttl --enable-ttl
"$sim" --join-pd "$real_pd" --stores 3 --regions 4 >"$logdir/joined.log" 2>&1 &
pids+=($!)
v1_pd=$(sim_pd_addr v1 "${pids[0]}")
ttl_pd=$(sim_pd_addr ttl "${pids[1]}")
echo "V1 cluster PD $v1_pd, V1 cluster with TTL PD $ttl_pd, real PD $real_pd"

# kvproto's pseudo-versions are not in the checksum database the proxy
# serves; go.sum pins their hashes, so the check is skipped for that module only.
go_bin="$logdir/peer-client-go"
(cd tests/peer-client-go &&
  GONOSUMDB=github.com/pingcap/kvproto GOFLAGS="-mod=readonly -buildvcs=false" \
    go build -o "$go_bin" .)

"$go_bin" --raw-pd "$v1_pd" --txn-pd "$v1_pd" --ttl-pd "$ttl_pd" 2>"$logdir/client-go.stderr" || {
  status=$?
  echo "client-go peer failed (exit $status); its log:" >&2
  tail -n 50 "$logdir/client-go.stderr" >&2
  exit "$status"
}

echo "--- client-go against the real PD and tikv-sim --join-pd stores"
for _ in $(seq 1 200); do
  if grep -q '^ready' "$logdir/joined.log"; then break; fi
  if ! kill -0 "${pids[2]}" 2>/dev/null; then break; fi
  sleep 0.05
done
if ! grep -q '^ready' "$logdir/joined.log"; then
  echo "tikv-sim --join-pd did not join the real PD:" >&2
  cat "$logdir/joined.log" >&2
  exit 1
fi
"$go_bin" --real-pd --raw-pd "$real_pd" --txn-pd "$real_pd" 2>"$logdir/client-go-real-pd.stderr" || {
  status=$?
  echo "client-go peer against the real PD failed (exit $status); its log:" >&2
  tail -n 50 "$logdir/client-go-real-pd.stderr" >&2
  exit "$status"
}

echo "--- tikv-client 0.4 against the real PD and tikv-sim --join-pd stores"
"$CARGO_TARGET_DIR/debug/peer-tikv-client" --pd "$real_pd"

echo "--- our examples against the real PD and tikv-sim --join-pd stores"
# Built by the test step already (cargo test builds examples); each runs
# its client-go counterpart's steps against the cluster given by --pd.
cargo build --locked -p tikv-tokio --examples
for example in quickstart transaction async_commit one_pc pessimistic split_scatter delete_range stale_read \
  gc_worker unsafe_destroy_range metrics; do
  "$CARGO_TARGET_DIR/debug/examples/$example" --pd "$real_pd" >"$logdir/example-$example.log" 2>&1 || {
    status=$?
    echo "example $example against the real PD failed (exit $status):" >&2
    cat "$logdir/example-$example.log" >&2
    exit "$status"
  }
  echo "example $example: $(tail -n 1 "$logdir/example-$example.log")"
done
# pipelined_dml writes 1,000,000 keys by default; 100,000 spill a generation
# at client-go's thresholds and keep the run short.
"$CARGO_TARGET_DIR/debug/examples/pipelined_dml" --pd "$real_pd" --keys 100000 \
  >"$logdir/example-pipelined_dml.log" 2>&1 || {
  status=$?
  echo "example pipelined_dml against the real PD failed (exit $status):" >&2
  cat "$logdir/example-pipelined_dml.log" >&2
  exit "$status"
}
echo "example pipelined_dml: $(tail -n 1 "$logdir/example-pipelined_dml.log")"

echo "--- interop: our client and client-go on one cluster"
"$CARGO_TARGET_DIR/debug/interop-client-go" --go-bin "$go_bin" \
  --go-log "$logdir/interop-client-go.log" || {
  status=$?
  echo "interop with client-go failed (exit $status); client-go's log:" >&2
  tail -n 50 "$logdir/interop-client-go.log" >&2
  exit "$status"
}

echo "--- interop: our client and client-go on one cluster of simulated stores joined to a real PD"
"$CARGO_TARGET_DIR/debug/interop-client-go" --go-bin "$go_bin" --real-pd \
  --go-log "$logdir/interop-client-go-real-pd.log" || {
  status=$?
  echo "interop with client-go on the real PD failed (exit $status); client-go's log:" >&2
  tail -n 50 "$logdir/interop-client-go-real-pd.log" >&2
  exit "$status"
}

echo "--- side-by-side benchmark, smoke run"
"$CARGO_TARGET_DIR/debug/tikv-bench" --secs 0.2 --reps 1 --conc 2 --ops get,put \
  --modes batch,batch-async-std,floor-stream,client-go,tikv-client \
  --client-go "$go_bin" --tikv-client "$CARGO_TARGET_DIR/debug/tikv-client-bench"

echo "--- contended-counter benchmark, smoke run"
"$CARGO_TARGET_DIR/debug/txn-contention" --secs 0.3 --reps 1 --conc 4 --keys 2 \
  --client-go "$go_bin"

echo "--- transactional benchmark, smoke run"
"$CARGO_TARGET_DIR/debug/txn-bench" --secs 0.2 --reps 1 --conc 2 --client-go "$go_bin"

echo "--- YCSB workloads A-F, ours and client-go (its ycsb mode), raw and txn, smoke run"
"$CARGO_TARGET_DIR/debug/ycsb-bench" --secs 0.1 --reps 1 --conc 2 --records 300 --client-go "$go_bin"

echo "--- slow-store benchmark, smoke run"
"$CARGO_TARGET_DIR/debug/slow-store-bench" --secs 0.3 --warm-secs 0.3 --reps 1 --conc 4 \
  --reads prefer-leader,follower --faults none,slow-100,black-hole --client-go "$go_bin"

echo "--- membuffer bytes per key beside client-go's memdb, smoke run"
"$CARGO_TARGET_DIR/debug/membuffer-mem" --keys 20000 --client-go "$go_bin"

echo "--- client-go's region cache benchmark mode, smoke run (ours compiles under clippy's --all-targets)"
"$go_bin" regioncachebench --regions 2000 --warm-up 20ms --measure 50ms
