#!/usr/bin/env bash
# Export benchmark: a large approved document ECM -> SFTP through the real
# ecm-export binary, against the SFTP adapter's own write, OpenSSH `sftp put`
# and a `curl` + `sftp put` script; prints MB/s, ratios and the function's
# peak RSS. Needs root (chrooted sshd), moto and cargo's bench profile.
#
#   tests/bench/export_throughput.sh [--size-mib 1024] [--runs 2]
#
# Same profile overrides as sftp_throughput.sh (optimised, no fat LTO).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_PROFILE_BENCH_LTO=false
export CARGO_PROFILE_BENCH_CODEGEN_UNITS=16
# The bench runs the ecm-export binary of the same profile.
cargo build --profile bench -p ecm-export
exec cargo bench -p xecm-stack --bench export_throughput -- "$@"
