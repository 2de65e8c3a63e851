#!/usr/bin/env bash
# SFTP throughput benchmark: our ssh2 adapter vs OpenSSH `sftp`, on loopback
# and behind a 20 ms RTT latency proxy, with our peak RSS. Needs root (it
# starts a chrooted sshd with dedicated accounts) and openssh-server.
#
#   tests/bench/sftp_throughput.sh [--size-mib 1024] [--runs 2] [--skip-proxy]
#
# Built with optimisation (the bench profile), but without the release
# profile's fat LTO / single codegen unit, which only shrink the Lambda
# binary and would triple the build time.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v /usr/sbin/sshd >/dev/null || apt-get -o DPkg::Lock::Timeout=120 install -y openssh-server
export CARGO_PROFILE_BENCH_LTO=false
export CARGO_PROFILE_BENCH_CODEGEN_UNITS=16
# Servers (sshd, the emulator, moto: the orchestrating process and its
# children) on CPU 1, every contender on CPU 0 (TOOLCHAIN's two-core method;
# a 1 vCPU Lambda gets one core too). XECM_BENCH_NO_PIN=1 turns it off.
PIN=()
if [ -z "${XECM_BENCH_NO_PIN:-}" ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN=(taskset -c 1)
    export XECM_BENCH_CONTENDER_CPUS=0
fi
cargo bench --no-run -q -p xecm-stack --bench sftp_throughput
exec "${PIN[@]}" cargo bench -q -p xecm-stack --bench sftp_throughput -- "$@"
