#!/usr/bin/env bash
# The live benchmark in one command: builds callvault and the benchmark (release), then runs
# callvault serve under N concurrent calls beside the receive floor and, when installed,
# rtpengine; searches the largest zero-loss call count for both back ends; prints the table and
# appends it to bench/RESULTS.md. Options are the benchmark's own: bench/run.sh --help.
#   bench/run.sh            the whole comparison (under 10 minutes on 2 cores)
#   bench/run.sh --quick    a few seconds: does the benchmark still work (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --locked --bench live -- "$@"
