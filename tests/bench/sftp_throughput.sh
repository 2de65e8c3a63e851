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
exec cargo bench -p xecm-stack --bench sftp_throughput -- "$@"
