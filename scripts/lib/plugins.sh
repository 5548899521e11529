# The CNI plugins as shipped: berth-cni and berth-ipam linked static and non-PIE, so a node's
# /opt/cni/bin needs no particular C library and every ADD/DEL process starts without a loader.
#
# They link musl when Rust's <arch>-unknown-linux-musl target is installed or rustup can add
# it, and static glibc otherwise. musl is preferred because the runtime starts one process per
# CNI call: static glibc spends about a quarter of such a process on its start-up CPU
# identification (dozens of CPUID instructions, each a VM exit on virtual machines), where
# musl's start-up does none (scripts/bench ipam: about 1.4x the operations per second on the
# 2-core test VM). Both are built and tested the same way; BERTH_PLUGIN_TARGET=<triple>
# chooses one explicitly.
#
# crt-static may only be applied with an explicit --target (build scripts and proc macros of
# the host must stay dynamic), so the binaries are under target/<triple>/<profile dir>/, not
# target/release or target/debug.
# shellcheck shell=bash

PLUGIN_BINARIES=(berth-cni berth-ipam)

host_triple() { rustc -vV | sed -n 's/^host: //p'; }

musl_triple() {
    local host
    host=$(host_triple)
    echo "${host%%-*}-unknown-linux-musl"
}

musl_installed() { rustup target list --installed 2>/dev/null | grep -qx "$(musl_triple)"; }

# plugin_triple — the target the plugins are built for (see above).
plugin_triple() {
    if [ -n "${BERTH_PLUGIN_TARGET:-}" ]; then
        echo "$BERTH_PLUGIN_TARGET"
    elif musl_installed; then
        musl_triple
    else
        host_triple
    fi
}

# Adds the musl target once if rustup can fetch it (the Rust registry); offline, the plugins
# fall back to static glibc, with a line saying so.
ensure_plugin_target() {
    [ -n "${BERTH_PLUGIN_TARGET:-}" ] && return 0
    musl_installed && return 0
    command -v rustup >/dev/null 2>&1 || return 0
    timeout 300 rustup target add "$(musl_triple)" >/dev/null 2>&1 ||
        log "Rust's $(musl_triple) target could not be added: the CNI plugins link static glibc (slower process start on VMs)"
}

# plugin_dir PROFILE — where build_plugins PROFILE puts the plugins. PROFILE: plugin (what
# ships: Cargo.toml's [profile.plugin]) or dev (what the end-to-end suites run).
plugin_dir() {
    local dir=$1
    [ "$dir" = dev ] && dir=debug
    echo "${CARGO_TARGET_DIR:-$BERTH_ROOT/target}/$(plugin_triple)/$dir"
}

# build_plugins PROFILE — builds the static plugins; fails with cargo's message. Only the two
# packages are built. Rust's musl target brings musl's own crt and libc; the one piece of C
# (and assembly) is ring's, the TLS crypto of the etcd store, which cc builds with musl-gcc
# (musl-tools, installed with the test bed's packages).
build_plugins() {
    local profile=$1 args=() b
    ensure_plugin_target
    for b in "${PLUGIN_BINARIES[@]}"; do args+=(-p "$b" --bin "$b"); done
    (cd "$BERTH_ROOT" &&
        RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
            cargo build --locked --quiet --profile "$profile" --target "$(plugin_triple)" "${args[@]}")
}
