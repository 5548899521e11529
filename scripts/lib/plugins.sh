# The CNI plugins as shipped: berth-cni and berth-ipam linked static and non-PIE, so a node's
# /opt/cni/bin needs no particular glibc and every ADD/DEL process starts without a loader.
# Static glibc needs target-feature=+crt-static, which cargo may only apply with an explicit
# --target (build scripts and proc macros of the host must stay dynamic); the binaries are
# therefore under target/<host triple>/<profile dir>/, not target/release or target/debug.
# shellcheck shell=bash

PLUGIN_BINARIES=(berth-cni berth-ipam)

host_triple() { rustc -vV | sed -n 's/^host: //p'; }

# plugin_dir PROFILE — where build_plugins PROFILE puts the plugins. PROFILE: plugin (what
# ships: Cargo.toml's [profile.plugin]) or dev (what the end-to-end suites run).
plugin_dir() {
    local dir=$1
    [ "$dir" = dev ] && dir=debug
    echo "${CARGO_TARGET_DIR:-$BERTH_ROOT/target}/$(host_triple)/$dir"
}

# build_plugins PROFILE — builds the static plugins; fails with cargo's message.
build_plugins() {
    local profile=$1
    (cd "$BERTH_ROOT" &&
        RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
            cargo build --locked --quiet --profile "$profile" --target "$(host_triple)" \
            "${PLUGIN_BINARIES[@]/#/--bin=}")
}
