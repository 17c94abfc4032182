#!/usr/bin/env bash
# The side-by-side benchmark (issues #6, #7 and #19): raw get and put
# through our client (BatchCommands on tokio and on async-std, unary),
# client-go, tikv-client 0.4 and the minimal tonic floors, against the echo
# cluster (canned answers: the ceiling) and then one `tikv-sim` process,
# medians of 3, with the ratios issues #7 and #19 set targets on (client
# peak RSS included), in one run;
# then, each beside client-go: YCSB's core workloads (ycsb-bench), small
# transactions (txn-bench), contended counters (txn-contention), snapshot
# gets by replica read type beside a slow or black-holed store
# (slow-store-bench), the transaction buffer's bytes per key
# (membuffer-mem) and the region cache (region-cache-vs-client-go.sh).
#
#   bash bench/side-by-side.sh                 # 2 s per cell, conc 1,64,256,1024
#   bash bench/side-by-side.sh --secs 1 --conc 64 --reps 1
#
# Builds everything in release first (tikv-sim, tikv-echo and tikv-bench; tikv-client's
# runner from tests/peer-tikv-client, its own workspace; client-go's program
# from tests/peer-client-go, which needs Go), then runs tikv-bench with every
# mode, then the others in the order above; extra arguments go to
# tikv-bench. About 40 minutes with the defaults. Not part of CI's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
out="$CARGO_TARGET_DIR/release"

echo "# side-by-side: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) vCPUs," \
  "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg)"
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
  --modes batch,batch-async-std,unary,floor-stream,floor-unary,client-go,tikv-client \
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

# Small transactions (read+write, four-region write, 16-key snapshot read;
# 2PC, async commit, 1PC, pessimistic) and contended counters, ours beside
# client-go on one tikv-sim, each with its own defaults.
echo
"$out/txn-bench" --client-go "$out/peer-client-go"
echo
"$out/txn-contention" --client-go "$out/peer-client-go"

# Memory: the transaction buffer's bytes per key for 1M keys beside
# client-go's ART memdb (the raw and txn tables above carry each client's
# peak RSS per cell).
echo
"$out/membuffer-mem" --client-go "$out/peer-client-go"

# The region cache: lookups at 100k and 1M regions and bytes per region,
# ours beside client-go's RegionCache.
echo
bash bench/region-cache-vs-client-go.sh
