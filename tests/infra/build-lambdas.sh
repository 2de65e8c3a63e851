#!/usr/bin/env bash
# Builds the three Lambda zips that infra/ deploys, exactly where Terraform
# looks for them by default (artifacts_dir = <repo>/target/lambda):
#
#   target/lambda/{sftp-ingest,ecm-export,backup-snapshot}/bootstrap.zip
#
# with `cargo lambda build --release --arm64 --output-format zip` limited to
# the three function crates (not the test crates). CPU heavy: about 10-20
# minutes on 2 cores from a cold cache; it runs under `nice`. Prints the
# duration and the zip and binary sizes. Not part of every CI run.
#
# Usage: tests/infra/build-lambdas.sh
set -euo pipefail

XECM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export XECM_ROOT
# shellcheck source=tests/lib/prereqs.sh
. "$XECM_ROOT/tests/lib/prereqs.sh"

ensure_rust
make_venv "$CARGO_LAMBDA_VENV" "cargo-lambda==$CARGO_LAMBDA_VERSION"
CARGO_LAMBDA="$CARGO_LAMBDA_VENV/bin/cargo-lambda"
if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
    log "rustup target add aarch64-unknown-linux-gnu"
    rustup target add aarch64-unknown-linux-gnu
fi
# cargo-lambda links with zig; the PyPI package brings it into the venv.
export PATH="$CARGO_LAMBDA_VENV/bin:$PATH"

FUNCTIONS=(sftp-ingest ecm-export backup-snapshot)
LAMBDA_DIR="$XECM_ROOT/target/lambda"
cd "$XECM_ROOT"

log "cargo lambda build --release --arm64 --output-format zip ${FUNCTIONS[*]/#/-p } (into $LAMBDA_DIR)"
start=$(date +%s)
# --lambda-dir: the zips land where Terraform looks even if CARGO_TARGET_DIR
# points elsewhere.
nice -n 10 "$CARGO_LAMBDA" lambda build --release --arm64 --output-format zip \
    --lambda-dir "$LAMBDA_DIR" \
    -p sftp-ingest -p ecm-export -p backup-snapshot
elapsed=$(($(date +%s) - start))

status=0
printf '%-16s %12s %14s  %s\n' function zip_bytes binary_bytes path
for fn in "${FUNCTIONS[@]}"; do
    zip="$LAMBDA_DIR/$fn/bootstrap.zip"
    if [ ! -s "$zip" ]; then
        log "missing $zip (Terraform expects it there)"
        status=1
        continue
    fi
    zip_bytes=$(stat -c %s "$zip")
    bin_bytes=$(python3 -c 'import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).getinfo("bootstrap").file_size)' "$zip")
    printf '%-16s %12s %14s  %s\n' "$fn" "$zip_bytes" "$bin_bytes" "${zip#"$XECM_ROOT"/}"
done
log "built in ${elapsed}s"
exit $status
