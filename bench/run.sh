#!/usr/bin/env bash
# Configures and builds the release preset (only the benchmark and what it links),
# runs bench_sluice, writes bench/results/latest.json (quick.json with --quick) and
# prints the table.
#
#   bench/run.sh                 full run (about 1 minute here, bounded by ~4)
#   bench/run.sh --quick         smoke test (< 20 s)
#   bench/run.sh --no-redis      skip the Redis + Lua comparison
#
# Extra arguments go to bench_sluice (see --help there). The machine should be
# otherwise quiet: the numbers are per-call nanoseconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

jobs="${SLUICE_BENCH_JOBS:-1}"
cmake --preset release >/dev/null
cmake --build build/release --target bench_sluice -j"$jobs"

mkdir -p bench/results
out="bench/results/latest.json"
if [[ " $* " == *" --quick "* ]]; then out="bench/results/quick.json"; fi  # keep the full run's file
tmp="$(mktemp bench/results/.latest.XXXXXX.json)"
trap 'rm -f "$tmp"' EXIT

if [[ " $* " != *" --no-redis "* ]] && ! command -v redis-server >/dev/null && [[ ! -x /usr/bin/redis-server ]]; then
  echo "run.sh: redis-server not found; running with --no-redis" >&2
  set -- "$@" --no-redis
fi

src="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git status --porcelain -- core capi 2>/dev/null | awk '{print $2}' | tr '\n' ' ')"
if [[ -n "$dirty" ]]; then src="$src + uncommitted changes in: ${dirty% }"; fi

./build/release/bench/bench_sluice --json "$tmp" --source "$src" "$@"
chmod 644 "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "results: $out"
