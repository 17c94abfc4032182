#!/usr/bin/env bash
# Runs the peer clients against the simulated cluster:
#  1. tikv-client 0.4 (tests/peer-tikv-client: its own workspace and lock
#     file; it starts its simulated clusters in-process);
#  2. Go's client-go v2 (tests/peer-client-go), against two `tikv-sim`
#     processes started here: an API V1 raw cluster and an API V1 txn one;
#  3. our client and client-go on one cluster (`interop-client-go` of the
#     tikv-tests crate: it serves the cluster in its own process and drives
#     the Go program's `interop` step server);
#  4. a smoke run of the side-by-side benchmark (debug builds, a fraction of
#     a second per cell: it checks that every client's runner works, not
#     how fast it is; the benchmark itself is bench/side-by-side.sh).
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
cargo build --locked -p tikv-sim --bin tikv-sim --bin tikv-echo -p tikv-tests --bin interop-client-go \
  -p tikv-bench --bin tikv-bench
sim="$CARGO_TARGET_DIR/debug/tikv-sim"

logdir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$logdir"
}
trap cleanup EXIT

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

start_sim raw
start_sim txn --txn
raw_pd=$(sim_pd_addr raw "${pids[0]}")
txn_pd=$(sim_pd_addr txn "${pids[1]}")
echo "raw cluster PD $raw_pd, txn cluster PD $txn_pd"

# kvproto's pseudo-versions are not in the checksum database the proxy
# serves; go.sum pins their hashes, so the check is skipped for that module only.
go_bin="$logdir/peer-client-go"
(cd tests/peer-client-go &&
  GONOSUMDB=github.com/pingcap/kvproto GOFLAGS="-mod=readonly -buildvcs=false" \
    go build -o "$go_bin" .)

"$go_bin" --raw-pd "$raw_pd" --txn-pd "$txn_pd" 2>"$logdir/client-go.stderr" || {
  status=$?
  echo "client-go peer failed (exit $status); its log:" >&2
  tail -n 50 "$logdir/client-go.stderr" >&2
  exit "$status"
}

echo "--- interop: our client and client-go on one cluster"
"$CARGO_TARGET_DIR/debug/interop-client-go" --go-bin "$go_bin" \
  --go-log "$logdir/interop-client-go.log" || {
  status=$?
  echo "interop with client-go failed (exit $status); client-go's log:" >&2
  tail -n 50 "$logdir/interop-client-go.log" >&2
  exit "$status"
}

echo "--- side-by-side benchmark, smoke run"
"$CARGO_TARGET_DIR/debug/tikv-bench" --secs 0.2 --reps 1 --conc 2 --ops get,put \
  --modes batch,floor-stream,client-go,tikv-client \
  --client-go "$go_bin" --tikv-client "$CARGO_TARGET_DIR/debug/tikv-client-bench"
