# What the test bed needs on a fresh Debian bookworm machine, fetched once and cached under
# .cache/ (git-ignored): Debian packages into the system, containerd 2.1 (sid) and 1.7
# (trixie) only unpacked into the cache, never installed.
# shellcheck shell=bash

SYSTEM_PACKAGES=(
    runc containernetworking-plugins umoci skopeo busybox-static libfaketime faketime
    etcd-server etcd-client protobuf-compiler iproute2 iputils-ping arping tcpdump python3 gcc libc6-dev
    procps kmod jq curl python3-venv systemd
    # the test bed's etcd runs with TLS and client certificates, made with openssl
    openssl
    # faketime's tests: a JVM run under the shim (bind-mounted into the glibc test image), musl
    # programs (the musl test image), and the vDSO tests' and the faketime bench's static probes
    # (agents/faketime/testdata)
    openjdk-17-jre-headless musl-tools golang-go
)

# What scripts/demo needs of SYSTEM_PACKAGES: containerd's runc, loopback and portmap, the
# image tools, gcc for the pause image and the faketime shim, protoc for the gRPC crates,
# python3 (copied into the glibc image), jq, and procps/iproute2 for teardown.
DEMO_PACKAGES=(
    runc containernetworking-plugins umoci skopeo busybox-static protobuf-compiler iproute2
    python3 gcc libc6-dev procps jq
)

# Debian suite and version prefix for each containerd the test bed can run.
containerd_suite() {
    case $1 in
    2.1) echo sid ;;
    1.7) echo trixie ;;
    *) die "unknown containerd version '$1': use BERTH_CONTAINERD=2.1 or 1.7" ;;
    esac
}

# install_system_packages [PACKAGE...] — the missing ones of the list (default SYSTEM_PACKAGES).
install_system_packages() {
    local missing=() p wanted=("$@")
    [ ${#wanted[@]} -gt 0 ] || wanted=("${SYSTEM_PACKAGES[@]}")
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq || die "apt-get update failed: is the Debian mirror reachable?"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

# The system's own Debian mirror, so other suites come from the same place.
debian_mirror() {
    local uri
    uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1)
    [ -n "$uri" ] || uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1)
    [ -n "$uri" ] || die "cannot find the Debian mirror in /etc/apt/sources.list(.d)"
    echo "$uri"
}

# private_apt SUITE ARGS... — apt-get/apt-cache against SUITE without touching the system's apt setup.
private_apt_opts() {
    local dir=$BERTH_CACHE/apt/$1
    echo "-o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts=$dir/sources \
-o Dir::State::Lists=$dir/lists -o Dir::Cache=$dir/cache -o APT::Sandbox::User=root"
}

prepare_private_apt() {
    local suite=$1 dir=$BERTH_CACHE/apt/$1
    mkdir -p "$dir/sources" "$dir/lists/partial" "$dir/cache/archives/partial"
    cat >"$dir/sources/$suite.sources" <<EOF
Types: deb
URIs: $(debian_mirror)
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # shellcheck disable=SC2046
    apt-get $(private_apt_opts "$suite") update -qq || die "apt-get update for Debian $suite failed"
}

# fetch_containerd VERSION — unpack containerd VERSION.x into the cache; prints its dir.
fetch_containerd() {
    local version=$1 suite dir pkgver
    suite=$(containerd_suite "$version")
    dir=$BERTH_CACHE/containerd/$version
    if [ -x "$dir/usr/bin/containerd" ]; then
        echo "$dir"
        return 0
    fi
    log "fetching containerd $version.x from Debian $suite (first run only)"
    prepare_private_apt "$suite" >&2
    # shellcheck disable=SC2046
    pkgver=$(apt-cache $(private_apt_opts "$suite") madison containerd | awk -F'|' '{gsub(/ /,"",$2); print $2}' |
        grep -E "^$version\." | head -n1)
    [ -n "$pkgver" ] || die "Debian $suite has no containerd $version.x"
    local dl=$BERTH_CACHE/containerd/download
    rm -rf "$dl" && mkdir -p "$dl"
    # shellcheck disable=SC2046
    (cd "$dl" && apt-get $(private_apt_opts "$suite") download -qq "containerd=$pkgver") >&2 ||
        die "downloading containerd=$pkgver failed"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    dpkg-deb -x "$dl"/containerd_*.deb "$dir.tmp"
    echo "$pkgver" >"$dir.tmp/VERSION"
    mv "$dir.tmp" "$dir" && rm -rf "$dl"
    echo "$dir"
}
