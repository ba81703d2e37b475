#!/usr/bin/env bash
# Every benchmark behind BENCHMARKS.md, each measuring its baseline in the same run, in one
# go (optimised build). About 30 minutes on a 2-core machine, most of it the Genesys quota
# run (10x burst at 300 requests/min) and seeding 10 M adoption events. Output goes to the
# terminal and to target/bench-logs/NAME.txt. Needs chromium and chromium-driver for the
# panel bench (scripts/test.sh installs them).
#
#   bash scripts/bench.sh            # all of them
#   bash scripts/bench.sh live rss   # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
all=(perf service live rss panel adoption quota)
names=("${@:-${all[@]}}")
mkdir -p target/bench-logs
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); load: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench --no-run
for b in "${names[@]}"; do
    echo "== cargo bench --bench $b"
    cargo bench --bench "$b" 2>&1 | tee "target/bench-logs/$b.txt"
done
