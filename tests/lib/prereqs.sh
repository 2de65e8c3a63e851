# shellcheck shell=bash
# Installs what the test suite and the demo need, idempotently, on a Debian
# machine as root: OpenSSH server and client, build tools for the vendored
# OpenSSL/libssh2, Python venvs for moto (local AWS) and pyxecm (OpenText's
# client, for the emulator conformance test), and the Rust lint components.
# Sourced by tests/run.sh and tests/demo.sh; it prints what it installs.

XECM_ROOT=${XECM_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# Venvs live outside the checkout so that fresh clones on one machine share them.
XECM_CACHE=${XECM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xecm-sftp}
MOTO_VENV="$XECM_CACHE/venv-moto"
PYXECM_VENV="$XECM_CACHE/venv-pyxecm"
CARGO_LAMBDA_VENV="$XECM_CACHE/venv-cargo-lambda"
MOTO_VERSION=5.2.1
PYXECM_VERSION=3.7.0
CARGO_LAMBDA_VERSION=1.9.2
# Infra checks (tests/tests/infra.rs): checkov, and the AWS provider schema
# derived from the cdktf package generated from the provider pinned in
# infra/versions.tf (~> 6.25); 21.22.1 is the package built from 6.25.0.
CHECKOV_VENV="$XECM_CACHE/venv-checkov"
CHECKOV_VERSION=3.3.30
AWS_PROVIDER_VERSION=6.25.0
CDKTF_PROVIDER_AWS_VERSION=21.22.1

log() { printf '==> %s\n' "$*" >&2; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages: ${missing[*]} (run as root, or install them)"
        return 1
    fi
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=120 update -qq
    apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_system_packages() {
    apt_install openssh-server openssh-client ca-certificates curl perl make gcc pkg-config python3 python3-venv passwd procps
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        # Debian's rustup package, then a stable toolchain through it.
        apt_install rustup && rustup default stable
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || { log "cargo not found and could not be installed"; return 1; }
    if command -v rustup >/dev/null 2>&1; then
        for comp in rustfmt clippy; do
            rustup component list --installed 2>/dev/null | grep -q "^$comp" || rustup component add "$comp"
        done
    fi
}

# make_venv DIR PIP-ARGS...: create DIR once and install into it; a marker
# file records the arguments so a change of pins reinstalls.
make_venv() {
    local dir=$1; shift
    local want="$*"
    if [ -f "$dir/.xecm-installed" ] && [ "$(cat "$dir/.xecm-installed")" = "$want" ]; then
        return 0
    fi
    log "creating Python venv $dir ($want)"
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$@"
    printf '%s' "$want" >"$dir/.xecm-installed"
}

ensure_python_tools() {
    make_venv "$MOTO_VENV" "moto[server]==$MOTO_VERSION"
    local constraints="$XECM_ROOT/tests/otcs-emulator/conformance/pyxecm-constraints.txt"
    make_venv "$PYXECM_VENV" -c "$constraints" "pyxecm==$PYXECM_VERSION"
    # cargo-lambda's Runtime API emulator (`cargo lambda watch`) for the
    # end-to-end test and the demo's webhook endpoint.
    make_venv "$CARGO_LAMBDA_VENV" "cargo-lambda==$CARGO_LAMBDA_VERSION"
    export XECM_MOTO_SERVER="$MOTO_VENV/bin/moto_server"
    export XECM_CARGO_LAMBDA="$CARGO_LAMBDA_VENV/bin/cargo-lambda"
    export XECM_PYXECM_PYTHON="$PYXECM_VENV/bin/python"
}

# checkov in a cached venv, and the AWS provider schema derived once from
# `npm pack @cdktf/provider-aws` (the 130 MB .jsii is not kept; the derived
# schema, about 1.5 MB, stays in the cache and never enters the tree).
ensure_infra_tools() {
    make_venv "$CHECKOV_VENV" "checkov==$CHECKOV_VERSION"
    export XECM_CHECKOV="$CHECKOV_VENV/bin/checkov"
    local schema="$XECM_CACHE/aws-provider-$AWS_PROVIDER_VERSION-schema.json"
    if [ ! -s "$schema" ]; then
        command -v npm >/dev/null 2>&1 || apt_install npm
        local tmp
        tmp=$(mktemp -d)
        log "deriving the AWS provider $AWS_PROVIDER_VERSION schema from @cdktf/provider-aws@$CDKTF_PROVIDER_AWS_VERSION"
        if ! (cd "$tmp" && npm pack --silent "@cdktf/provider-aws@$CDKTF_PROVIDER_AWS_VERSION" >/dev/null &&
            tar -xzf cdktf-provider-aws-"$CDKTF_PROVIDER_AWS_VERSION".tgz package/.jsii &&
            python3 "$XECM_ROOT/tests/infra/derive_schema.py" package/.jsii schema.json); then
            rm -rf "$tmp"
            log "could not derive the AWS provider schema"
            return 1
        fi
        if ! grep -q "\"provider_version\": \"$AWS_PROVIDER_VERSION\"" "$tmp/schema.json"; then
            rm -rf "$tmp"
            log "@cdktf/provider-aws@$CDKTF_PROVIDER_AWS_VERSION is not built from AWS provider $AWS_PROVIDER_VERSION"
            return 1
        fi
        mkdir -p "$XECM_CACHE"
        mv "$tmp/schema.json" "$schema"
        rm -rf "$tmp"
    fi
    export XECM_AWS_PROVIDER_SCHEMA="$schema"
}

ensure_all() {
    ensure_system_packages
    ensure_rust
    ensure_python_tools
    ensure_interop_servers
    ensure_infra_tools
    mkdir -p /run/sshd 2>/dev/null || true
}

# The other SFTP servers of the interop suite (tests/tests/interop.rs):
# ProFTPD with mod_sftp, Dropbear and tinysshd (both serving OpenSSH's
# sftp-server), and a venv with asyncssh and paramiko for the two Python
# servers. Packages only: the tests start each server on 127.0.0.1 and stop
# it; a service the package manager may have started is stopped again.
SFTP_SERVERS_VENV="$XECM_CACHE/venv-sftp-servers"
ASYNCSSH_VERSION=2.24.1
PARAMIKO_VERSION=5.1.0

ensure_interop_servers() {
    local had_proftpd=0
    dpkg-query -W -f='${Status}' proftpd-core 2>/dev/null | grep -q "install ok installed" && had_proftpd=1
    apt_install proftpd-core proftpd-mod-crypto dropbear-bin tinysshd openssh-sftp-server
    if [ "$had_proftpd" -eq 0 ] && [ -x /etc/init.d/proftpd ] && pgrep -x proftpd >/dev/null 2>&1; then
        log "stopping the proftpd service the package started"
        /etc/init.d/proftpd stop >/dev/null 2>&1 || true
    fi
    make_venv "$SFTP_SERVERS_VENV" "asyncssh==$ASYNCSSH_VERSION" "paramiko==$PARAMIKO_VERSION"
    export XECM_SFTP_SERVERS_PYTHON="$SFTP_SERVERS_VENV/bin/python"
}

# cargo-fuzz for tests/fuzz.sh (docs/fuzzing.md), built once into
# ~/.cargo/bin. It drives libFuzzer with -Z flags; RUSTC_BOOTSTRAP=1, set by
# tests/fuzz.sh, lets the stable toolchain accept them.
CARGO_FUZZ_VERSION=${CARGO_FUZZ_VERSION:-0.13.2}
ensure_cargo_fuzz() {
    ensure_rust
    if cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
        return 0
    fi
    log "cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
}
