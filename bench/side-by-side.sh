#!/usr/bin/env bash
# The side-by-side benchmark (issues #6 and #7): raw get and put through our
# tokio client (BatchCommands and unary), client-go, tikv-client 0.4 and the
# minimal tonic floors, against the echo cluster (canned answers: the
# ceiling) and then one `tikv-sim` process, medians of 3, with the ratios
# issue #7 sets targets on, in one run; then YCSB's core workloads through
# our client and client-go (ycsb-bench), and slow-store-bench (snapshot
# gets by replica read type beside a slow or black-holed store).
#
#   bash bench/side-by-side.sh                 # 2 s per cell, conc 1,64,256,1024
#   bash bench/side-by-side.sh --secs 1 --conc 64 --reps 1
#
# Builds everything in release first (tikv-sim, tikv-echo and tikv-bench; tikv-client's
# runner from tests/peer-tikv-client, its own workspace; client-go's program
# from tests/peer-client-go, which needs Go), then runs tikv-bench with every
# mode, then ycsb-bench and slow-store-bench; extra arguments go to
# tikv-bench. Not part of CI's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
out="$CARGO_TARGET_DIR/release"

cargo build --release --locked -p tikv-sim -p tikv-bench
cargo build --release --locked --manifest-path tests/peer-tikv-client/Cargo.toml \
  --bin tikv-client-bench
if ! command -v go >/dev/null 2>&1; then
  echo "go not found: the client-go runner needs the Go toolchain" >&2
  exit 1
fi
# kvproto's pseudo-versions are not in the checksum database; go.sum pins them.
(cd tests/peer-client-go &&
  GONOSUMDB=github.com/pingcap/kvproto GOFLAGS="-mod=readonly -buildvcs=false" \
    go build -o "$out/peer-client-go" .)

"$out/tikv-bench" \
  --modes batch,unary,floor-stream,floor-unary,client-go,tikv-client \
  --client-go "$out/peer-client-go" --tikv-client "$out/tikv-client-bench" "$@"

# YCSB's core workloads A-F, ours and client-go, raw and transactional
# (ycsb-bench); $YCSB_ARGS (e.g. "--conc 64,256 --records 10000") goes to it.
echo
# shellcheck disable=SC2086 # YCSB_ARGS is a list of arguments
"$out/ycsb-bench" --client-go "$out/peer-client-go" ${YCSB_ARGS:-}

# Snapshot gets by replica read type beside a slow or black-holed store,
# ours and client-go's (issue #16); its own defaults (conc 64, 2 s cells,
# medians of 3), whatever the arguments above.
echo
"$out/slow-store-bench" --client-go "$out/peer-client-go"
