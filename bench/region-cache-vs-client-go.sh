#!/usr/bin/env bash
# Our region cache against client-go's (issue #19, item 4): random
# `locate_key`s at 100k and 1M regions with TiDB-like start keys, 1 and 2
# reader threads, with and without a writer refreshing regions at 1 % of the
# lookup rate, plus bytes per cached region; the two run alternately for
# ROUNDS rounds (default 3) and one table of medians is printed.
#
#   bash bench/region-cache-vs-client-go.sh [ROUNDS]
#
# Ours is core/benches/region_cache.rs in its plain mode (REGION_CACHE_PLAIN=1:
# the criterion cases without criterion), client-go's is
# `peer-client-go regioncachebench` (tests/peer-client-go/regioncachebench.go).
# Both time each reader by the clock and by its thread's CPU time, and the
# whole process's CPU time per lookup (the writer's and, for Go, the garbage
# collector's background work included); on a machine shared with other
# work, the CPU columns are the ones to compare.
# Needs cargo, Go and python3. Not part of CI's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rounds="${1:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
out="$CARGO_TARGET_DIR/release"
logs="$CARGO_TARGET_DIR/region-cache-vs-client-go"
mkdir -p "$out" "$logs"
rm -f "$logs"/*.txt

cargo bench -p tikv-core --bench region_cache --locked --no-run
# kvproto's pseudo-versions are not in the checksum database; go.sum pins them.
(cd tests/peer-client-go &&
  GONOSUMDB=github.com/pingcap/kvproto GOFLAGS="-mod=readonly -buildvcs=false" \
    go build -o "$out/peer-client-go" .)

for round in $(seq "$rounds"); do
  echo "round $round/$rounds: ours" >&2
  REGION_CACHE_PLAIN=1 cargo bench -p tikv-core --bench region_cache --locked -q \
    2>/dev/null >"$logs/ours.$round.txt"
  echo "round $round/$rounds: client-go" >&2
  "$out/peer-client-go" regioncachebench --procs 2 >"$logs/client-go.$round.txt"
done

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) vCPUs," \
  "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg), medians of $rounds rounds"
python3 - "$logs" "$rounds" <<'EOF'
import statistics, sys

logs, rounds = sys.argv[1], int(sys.argv[2])

def read(side):
    """{(kind, regions, case): {field: [values over rounds]}}"""
    runs = {}
    for r in range(1, rounds + 1):
        for line in open(f"{logs}/{side}.{r}.txt"):
            words = line.split()
            if not words or words[0] not in ("HEAP", "RESULT"):
                continue
            fields = dict(w.split("=", 1) for w in words[1:])
            key = (words[0], int(fields["regions"]), fields.get("case", ""))
            for name, value in fields.items():
                if name not in ("regions", "case") and value != "?":
                    runs.setdefault(key, {}).setdefault(name, []).append(float(value))
    return runs

ours, go = read("ours"), read("client-go")

def median(side, key, field):
    values = side.get(key, {}).get(field)
    return statistics.median(values) if values else None

def ns(v):
    return "?" if v is None else (f"{v / 1000:.2f} µs" if v >= 1000 else f"{v:.0f} ns")

def ratio(a, b):
    return "?" if a is None or b is None or b == 0 else f"{a / b:.2f}"

# Per lookup: the reader threads' CPU time (mean over readers), the whole
# process's (writer and garbage collector included), elapsed time.
FIELDS = ("cpu_ns_per_lookup", "process_cpu_ns_per_lookup", "ns_per_lookup")

print()
print("| case | ours CPU | client-go CPU | ours/client-go | ours process CPU | client-go process CPU | ours/client-go | ours wall | client-go wall | ours/client-go |")
print("|---|---|---|---|---|---|---|---|---|---|")
for key in [k for k in ours if k[0] == "RESULT"]:
    _, n, case = key
    o = [median(ours, key, f) for f in FIELDS]
    g = [median(go, key, f) for f in FIELDS]
    print(f"| locate_key/{n}/{case} | {ns(o[0])} | {ns(g[0])} | {ratio(o[0], g[0])} "
          f"| {ns(o[1])} | {ns(g[1])} | {ratio(o[1], g[1])} "
          f"| {ns(o[2])} | {ns(g[2])} | {ratio(o[2], g[2])} |")
print()
print("| regions | ours heap B/region | ours resident B/region | client-go heap B/region | ours/client-go (heap) |")
print("|---|---|---|---|---|")
for key in [k for k in ours if k[0] == "HEAP"]:
    oh, orss = median(ours, key, "heap_bytes_per_region"), median(ours, key, "resident_bytes_per_region")
    gh = median(go, key, "heap_bytes_per_region")
    print(f"| {key[1]} | {oh:.0f} | {'?' if orss is None else f'{orss:.0f}'} "
          f"| {'?' if gh is None else f'{gh:.0f}'} | {ratio(oh, gh)} |")
EOF
