# Shared by tests/demo.sh and tests/demo/*.sh (sourced): headings and
# progress lines for a person reading the demo, plain when not a terminal.

# say_tagged TAG TEXT: a heading, bold on a terminal, plain text otherwise.
say_tagged() {
    local tag=$1
    shift
    if [ -t 1 ]; then
        printf '\n\033[1m[%s]\033[0m %s\n' "$tag" "$*"
    else
        printf '\n[%s] %s\n' "$tag" "$*"
    fi
}

# with_progress LABEL CMD...: runs CMD (its output as usual) and prints a
# line on stderr every 15 s while it is still running; returns its status.
with_progress() {
    local label=$1
    shift
    "$@" &
    local pid=$! t=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        t=$((t + 1))
        if [ $((t % 15)) = 0 ] && kill -0 "$pid" 2>/dev/null; then
            printf '==> %s: still running (%d s)\n' "$label" "$t" >&2
        fi
    done
    wait "$pid"
}

# show_events: the audit events published since the last call (moto capture).
show_events() {
    echo "audit events published:"
    "${XECM_BIN:-$XECM_ROOT/target/debug}/xecm-stack" events
}
