#!/usr/bin/env bash
# Runs the whole xecm-sftp test suite: formatting and lint checks, unit tests,
# and the integration tests against the real local stack (OpenSSH sshd, the
# Content Server emulator, moto), including the pyxecm conformance test, and
# the README's walkthrough as written (tests/demo/partner.sh).
# Installs its own prerequisites (apt, pip, cargo components) idempotently,
# may be called from any directory, and leaves no process running.
set -euo pipefail

XECM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export XECM_ROOT
# shellcheck source=tests/lib/prereqs.sh
. "$XECM_ROOT/tests/lib/prereqs.sh"

ensure_all
cd "$XECM_ROOT"

# Smaller target/ and faster links; tests do not need full debug info.
export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo build (the function binaries the end-to-end tests run)"
cargo build --workspace --bins --locked

log "cargo test (unit + integration against sshd, emulator, moto)"
cargo test --workspace --lib --bins --tests --locked --no-fail-fast

log "the README's walkthrough and Invoke examples, as written (tests/demo/partner.sh)"
"$XECM_ROOT/tests/demo/partner.sh"

log "cargo fuzz: every target briefly (docs/fuzzing.md has the long run)"
"$XECM_ROOT/tests/fuzz.sh" --seconds "${XECM_FUZZ_SECONDS:-15}"

log "all tests passed"
