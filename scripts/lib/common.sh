# Shared by scripts/*: paths, logging, and process handling that only ever touches what the
# test bed itself started (recorded pids, checked against their command lines).
# shellcheck shell=bash

BERTH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BERTH_CACHE=${BERTH_CACHE:-$BERTH_ROOT/.cache}
BERTH_RUN=${BERTH_RUN:-$BERTH_ROOT/.run}
TESTBED_DIR=$BERTH_RUN/testbed

# Ports of the test bed's etcd: loopback only.
ETCD_CLIENT_PORT=${BERTH_ETCD_PORT:-23790}
ETCD_PEER_PORT=$((ETCD_CLIENT_PORT + 10))

log() { printf '\033[1m[%s]\033[0m %s\n' "${0##*/}" "$*" >&2; }
die() {
    printf '\033[31m[%s] error:\033[0m %s\n' "${0##*/}" "$*" >&2
    exit 1
}

need_root() {
    [ "$(id -u)" = 0 ] || die "the test bed needs root (network namespaces, mounts, containerd): run as root"
}

# pid_alive PIDFILE PATTERN — true when the pid in PIDFILE runs and its command line
# contains PATTERN; we never signal a pid that was reused by something else.
pid_alive() {
    local pidfile=$1 pattern=$2 pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"
}

# stop_pid PIDFILE PATTERN [TIMEOUT_S] — TERM, wait, then KILL the recorded process.
stop_pid() {
    local pidfile=$1 pattern=$2 timeout=${3:-10} pid i
    if pid_alive "$pidfile" "$pattern"; then
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < timeout * 10; i++)); do
            pid_alive "$pidfile" "$pattern" || break
            sleep 0.1
        done
        if pid_alive "$pidfile" "$pattern"; then
            log "pid $pid did not stop on TERM within ${timeout}s, killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
    fi
    rm -f "$pidfile"
}

# spawn_daemon LOG COMMAND... — COMMAND in a session of its own, stdin from /dev/null, output
# appended to LOG, in the background ($! is its pid). Descriptors above 2 are closed first: a
# daemon must not keep what its caller holds, such as the test bed's lock when a script runs
# under `flock /tmp/berth-testbed.lock` (containerd, its shims and the pods would hold it for
# as long as they live).
spawn_daemon() {
    local log=$1
    shift
    (
        local fd
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
        done
        exec setsid "$@" >>"$log" 2>&1 </dev/null
    ) &
}

# wait_for SECONDS DESCRIPTION COMMAND... — poll COMMAND every 100 ms.
wait_for() {
    local seconds=$1 what=$2 i
    shift 2
    for ((i = 0; i < seconds * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

elapsed_since() { echo $(($(date +%s%N) / 1000000 - $1)); }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
