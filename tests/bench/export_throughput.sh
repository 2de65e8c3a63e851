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
# Servers (sshd, the emulator, moto: the orchestrating process and its
# children) on CPU 1, every contender on CPU 0 (TOOLCHAIN's two-core method;
# a 1 vCPU Lambda gets one core too). XECM_BENCH_NO_PIN=1 turns it off.
PIN=()
if [ -z "${XECM_BENCH_NO_PIN:-}" ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN=(taskset -c 1)
    export XECM_BENCH_CONTENDER_CPUS=0
fi
cargo bench --no-run -q -p xecm-stack --bench export_throughput
exec "${PIN[@]}" cargo bench -q -p xecm-stack --bench export_throughput -- "$@"
