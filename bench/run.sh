#!/usr/bin/env bash
# The live benchmark in one command: builds callvault and the benchmark (release), then runs
# callvault serve under N concurrent calls beside the receive floor and, when installed,
# rtpengine; searches the largest zero-loss call count for both back ends; prints the table and
# appends it to bench/RESULTS.md. Options are the benchmark's own: bench/run.sh --help.
#   bench/run.sh            the whole comparison (about 3 minutes on 2 cores)
#   bench/run.sh --quick    a few seconds: does the benchmark still work (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
# Build, then run the benchmark binary in place of this script, so that signals sent to this
# pid (kill, timeout, Ctrl-C) reach the benchmark itself, which takes its children with it.
exe=$(cargo bench --locked --bench live --no-run --message-format=json \
    | grep -o '"executable":"[^"]*/live-[^"]*"' | tail -n 1 | sed 's/^"executable":"//; s/"$//')
[ -x "$exe" ] || { echo "bench/run.sh: the benchmark did not build" >&2; exit 1; }
exec "$exe" "$@"
