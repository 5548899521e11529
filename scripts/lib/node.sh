# One test node: a private containerd (CRI + NRI) whose root, state, sockets, runc root, pod
# netns, CNI config and pod logs all live under $TESTBED_DIR/nodes/<name>, so nodes never
# touch the machine's own /run/containerd or /var/run/netns and several can run at once.
# shellcheck shell=bash

node_dir() { echo "$TESTBED_DIR/nodes/$1"; }

# CAP_SYS_RESOURCE (bit 24) missing → containerd must not give sandboxes oom_score_adj -998,
# or runc 1.1.5 fails with "can't get final child's PID from pipe: EOF".
restrict_oom() {
    local capeff
    capeff=$(awk '/^CapEff/ {print $2}' /proc/self/status)
    if (((0x$capeff >> 24) & 1)); then echo false; else echo true; fi
}

write_config_2_1() {
    local dir=$1
    cat <<EOF
version = 3
root = '$dir/root'
state = '$dir/state'

[grpc]
  address = '$dir/containerd.sock'
[ttrpc]
  address = '$dir/containerd.sock.ttrpc'

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = '$dir/opt'
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = 'berth.test/pause:1'
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = $(restrict_oom)
    netns_mounts_under_state_dir = true
    enable_cdi = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = false
          BinaryName = '/usr/sbin/runc'
          Root = '$dir/runc'
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['$dir/cni-bin', '/usr/lib/cni']
      conf_dir = '$dir/cni-conf'
      max_conf_num = 1
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
  [plugins.'io.containerd.nri.v1.nri']
    disable = false
    socket_path = '$dir/nri.sock'
    plugin_path = '$dir/nri-plugins'
    plugin_config_path = '$dir/nri-conf'
EOF
}

write_config_1_7() {
    local dir=$1
    cat <<EOF
version = 2
root = '$dir/root'
state = '$dir/state'

[grpc]
  address = '$dir/containerd.sock'
[ttrpc]
  address = '$dir/containerd.sock.ttrpc'

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = '$dir/opt'
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = 'berth.test/pause:1'
    restrict_oom_score_adj = $(restrict_oom)
    netns_mounts_under_state_dir = true
    enable_cdi = false
    stream_server_address = '127.0.0.1'
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = 'overlayfs'
      default_runtime_name = 'runc'
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          BinaryName = '/usr/sbin/runc'
          Root = '$dir/runc'
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = '$dir/cni-bin-1.7'
      conf_dir = '$dir/cni-conf'
      max_conf_num = 1
  [plugins."io.containerd.nri.v1.nri"]
    disable = false
    socket_path = '$dir/nri.sock'
    plugin_path = '$dir/nri-plugins'
    plugin_config_path = '$dir/nri-conf'
EOF
}

# The reference bridge + host-local network a node gets unless told otherwise.
reference_conflist() {
    local name=$1 index=$2 dir=$3
    cat <<EOF
{
  "cniVersion": "1.0.0",
  "name": "tb-$name",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "tb$index",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni-ipam",
        "ranges": [[{"subnet": "10.99.$index.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
}

# A small index per node (10.99.<index>.0/24, bridge tb<index>), reused once a node is gone.
node_index() {
    local name=$1 dir i
    dir=$(node_dir "$name")
    if [ -f "$dir/index" ]; then
        cat "$dir/index"
        return
    fi
    for ((i = 1; i < 250; i++)); do
        grep -qsx "$i" "$TESTBED_DIR"/nodes/*/index || {
            echo "$i"
            return
        }
    done
    die "no free node index: run scripts/testbed down"
}

containerd_running() { pid_alive "$(node_dir "$1")/containerd.pid" "--config $(node_dir "$1")/config.toml"; }

start_containerd() {
    local name=$1 dir version cdir
    dir=$(node_dir "$name")
    version=$(cat "$dir/containerd-version")
    cdir=$(fetch_containerd "$version")
    containerd_running "$name" && return 0
    # containerd finds containerd-shim-runc-v2 on PATH; the runc it runs is bookworm's.
    PATH="$cdir/usr/bin:/usr/sbin:/usr/bin:/sbin:/bin" spawn_daemon "$dir/containerd.log" \
        "$cdir/usr/bin/containerd" --config "$dir/config.toml" --log-level info
    echo $! >"$dir/containerd.pid"
    wait_for 30 "containerd socket" "$cdir/usr/bin/ctr" --address "$dir/containerd.sock" version ||
        die "containerd $version of node $name did not come up; see $dir/containerd.log"
}

# node_up NAME [--containerd 2.1|1.7] [--conflist FILE] [--nri-config FILE] [--images "A B"]
# — idempotent. --nri-config appends FILE to containerd's config right after the NRI table
# (bare keys land in that table); without it the config is unchanged. --images imports only
# those test images (default: all of TEST_IMAGES).
node_up() {
    local name=$1 version=${BERTH_CONTAINERD:-2.1} conflist="" nri_config="" dir index cdir
    local images=("${TEST_IMAGES[@]}")
    shift
    while [ $# -gt 0 ]; do
        case $1 in
        --containerd)
            version=$2
            shift 2
            ;;
        --conflist)
            conflist=$2
            shift 2
            ;;
        --nri-config)
            nri_config=$2
            shift 2
            ;;
        --images)
            read -r -a images <<<"$2"
            shift 2
            ;;
        *) die "node-up: unknown option $1" ;;
        esac
    done
    [[ $name =~ ^[a-z0-9][a-z0-9-]{0,30}$ ]] || die "node name '$name' must be lowercase letters, digits and dashes"
    containerd_suite "$version" >/dev/null
    dir=$(node_dir "$name")
    if containerd_running "$name"; then
        [ "$(cat "$dir/containerd-version")" = "$version" ] ||
            die "node $name already runs containerd $(cat "$dir/containerd-version"); take it down first"
    fi
    index=$(node_index "$name")
    mkdir -p "$dir"/{cni-bin,cni-conf,cni-ipam,nri-plugins,nri-conf,pod-logs,opt}
    echo "$index" >"$dir/index"
    echo "$version" >"$dir/containerd-version"
    # containerd 1.7 takes one CNI bin dir: a link farm of the reference plugins plus berth's.
    if [ "$version" = 1.7 ]; then
        mkdir -p "$dir/cni-bin-1.7"
        local p
        for p in /usr/lib/cni/*; do ln -sfn "$p" "$dir/cni-bin-1.7/$(basename "$p")"; done
    fi
    "write_config_${version/./_}" "$dir" >"$dir/config.toml"
    # The NRI table is the last one both writers emit.
    [ -z "$nri_config" ] || cat "$nri_config" >>"$dir/config.toml"
    if [ -n "$conflist" ]; then
        cp "$conflist" "$dir/cni-conf/10-net.conflist.tmp"
    else
        reference_conflist "$name" "$index" "$dir" >"$dir/cni-conf/10-net.conflist.tmp"
    fi
    mv "$dir/cni-conf/10-net.conflist.tmp" "$dir/cni-conf/10-net.conflist"
    start_containerd "$name"
    cdir=$(fetch_containerd "$version")
    local image have
    have=$("$cdir/usr/bin/ctr" --address "$dir/containerd.sock" -n k8s.io images ls -q 2>/dev/null)
    for image in "${images[@]}"; do
        grep -qx "$(image_ref "$image")" <<<"$have" && continue
        "$cdir/usr/bin/ctr" --address "$dir/containerd.sock" -n k8s.io images import "$IMAGES_DIR/$image.tar" \
            >/dev/null || die "importing $image into node $name failed"
    done
    write_node_env "$name"
}

write_node_env() {
    local name=$1 dir
    dir=$(node_dir "$name")
    cat >"$dir/env.tmp" <<EOF
BERTH_NODE=$name
BERTH_NODE_DIR=$dir
BERTH_NODE_INDEX=$(cat "$dir/index")
BERTH_CONTAINERD_VERSION=$(cat "$dir/containerd-version")
BERTH_CONTAINERD_SOCKET=$dir/containerd.sock
BERTH_CONTAINERD_PID=$(cat "$dir/containerd.pid")
BERTH_NRI_SOCKET=$dir/nri.sock
BERTH_CNI_CONF_DIR=$dir/cni-conf
BERTH_CNI_BIN_DIR=$([ "$(cat "$dir/containerd-version")" = 1.7 ] && echo "$dir/cni-bin-1.7" || echo "$dir/cni-bin")
BERTH_POD_LOG_ROOT=$dir/pod-logs
BERTH_CGROUP_PARENT=/berth-testbed/$name
BERTH_CTR=$(fetch_containerd "$(cat "$dir/containerd-version")")/usr/bin/ctr
EOF
    mv "$dir/env.tmp" "$dir/env"
}

# Pods are torn down over CRI, as kubelet would (so CNI DEL runs); what CRI could not remove
# is then cleaned by hand: tasks in our runc root, shims bound to our socket, our mounts.
node_down() {
    local name=$1 dir cri
    dir=$(node_dir "$name")
    [ -d "$dir" ] || return 0
    cri=$BERTH_ROOT/target/debug/berth-cri
    [ -x "$cri" ] || cri=$BERTH_ROOT/target/release/berth-cri
    if containerd_running "$name" && [ -x "$cri" ]; then
        timeout 120 "$cri" --socket "$dir/containerd.sock" teardown-all >>"$dir/teardown.log" 2>&1 ||
            log "node $name: CRI teardown reported problems (see $dir/teardown.log); cleaning by hand"
    fi
    stop_pid "$dir/containerd.pid" "--config $dir/config.toml" 15
    local id pid
    if [ -d "$dir/runc" ]; then
        for id in $(runc --root "$dir/runc" list -q 2>/dev/null); do
            runc --root "$dir/runc" kill "$id" KILL 2>/dev/null || true
            runc --root "$dir/runc" delete --force "$id" 2>/dev/null || true
        done
    fi
    # Shims of this node are the processes started with our socket as their address.
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $dir/containerd.sock" || true); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    unmount_under "$dir"
    remove_cgroups "/berth-testbed/$name"
    local index bridge
    index=$(cat "$dir/index" 2>/dev/null || true)
    bridge=tb$index
    [ -n "$index" ] && ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
    rm -rf "$dir"
}

unmount_under() {
    local dir=$1 m
    # Deepest first; lazily, because a dying shim may still hold a rootfs for a moment.
    for m in $(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}

remove_cgroups() {
    local rel=$1 ctrl
    for ctrl in /sys/fs/cgroup/*/; do
        [ -d "$ctrl${rel#/}" ] || continue
        find "$ctrl${rel#/}" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
}
