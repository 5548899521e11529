# Test images, built locally (there is no registry): an OCI layout made with umoci, named and
# turned into an archive by skopeo, imported into each node with `ctr images import`.
#   berth.test/pause:1   static C pause (exits on TERM/INT, reaps children), runs as 65535
#   berth.test/busybox:1 static busybox with every applet linked
#   berth.test/glibc:1   dynamically linked coreutils, dash and python3 from this machine, and
#                        the libraries the host's OpenJDK 17 needs (the JRE itself is bind-mounted
#                        by the tests that run it); built from `ldd` output only: no libdl.so.2
#   berth.test/preload:1 the glibc image whose config sets LD_PRELOAD (as jemalloc images do)
#   berth.test/musl:1    scripts/images/musl-clock.c, linked against musl dynamically
#                        (/bin/musl-clock, with musl's loader) and statically (/bin/musl-clock-static)
#   berth.test/clock:1   the clock probe built static with Go and with musl
#                        (agents/faketime/testdata), and a static busybox shell
# shellcheck shell=bash

IMAGES_DIR=$BERTH_CACHE/images
TEST_IMAGES=(pause busybox glibc preload musl clock)
# The host's OpenJDK (scripts/lib/install.sh installs it); tests bind-mount it into glibc containers.
JRE_DIR=/usr/lib/jvm/java-17-openjdk-amd64
# The library the preload image names in LD_PRELOAD (in the glibc image: python's _uuid needs it).
IMAGE_PRELOAD=/usr/lib/x86_64-linux-gnu/libuuid.so.1

image_ref() { echo "berth.test/$1:1"; }

# new_layout NAME — a fresh OCI layout with one empty image, unpacked into $work/bundle.
new_layout() {
    local name=$1
    work=$IMAGES_DIR/build-$name
    rm -rf "$work" && mkdir -p "$work"
    umoci init --layout "$work/oci"
    umoci new --image "$work/oci:1"
    umoci unpack --rootless --image "$work/oci:1" "$work/bundle" >/dev/null
    mkdir -p "$work/bundle/rootfs"/{tmp,etc,proc,sys,dev,bin}
    chmod 1777 "$work/bundle/rootfs/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\nberth:x:1000:1000:berth:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
        >"$work/bundle/rootfs/etc/passwd"
    printf 'root:x:0:\nberth:x:1000:\nnogroup:x:65534:\n' >"$work/bundle/rootfs/etc/group"
}

# finish_layout NAME CONFIG-ARGS... — repack, configure, and write the named archive.
finish_layout() {
    local name=$1
    shift
    umoci repack --image "$work/oci:1" "$work/bundle" >/dev/null
    umoci config --image "$work/oci:1" --config.env PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$@"
    write_archive "$name" 1
    rm -rf "$work"
}

# write_archive NAME TAG — the layout's TAG as $IMAGES_DIR/NAME.tar, named $(image_ref NAME).
write_archive() {
    rm -f "$IMAGES_DIR/$1.tar"
    skopeo copy --quiet "oci:$work/oci:$2" "docker-archive:$IMAGES_DIR/$1.tar.tmp:$(image_ref "$1")"
    mv "$IMAGES_DIR/$1.tar.tmp" "$IMAGES_DIR/$1.tar"
}

build_pause_image() {
    new_layout pause
    gcc -static -Os -o "$work/bundle/rootfs/pause" "$BERTH_ROOT/scripts/images/pause.c"
    finish_layout pause --config.entrypoint /pause --config.user 65535:65535
}

build_busybox_image() {
    new_layout busybox
    local root=$work/bundle/rootfs applet
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    finish_layout busybox --config.cmd /bin/sh
}

# copy_with_libs ROOT FILE... — copy executables and every shared library they load.
copy_with_libs() {
    local root=$1 f lib
    shift
    for f in "$@"; do
        [ -e "$f" ] || continue
        mkdir -p "$root$(dirname "$f")"
        cp -L "$f" "$root$f"
        for lib in $(ldd "$f" 2>/dev/null | grep -oE '/[^ ]+'); do
            [ -e "$root$lib" ] && continue
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
    done
}

build_glibc_image() {
    new_layout glibc
    local root=$work/bundle/rootfs py
    py=$(readlink -f /usr/bin/python3)
    # Debian's merged /usr: /bin, /lib and /lib64 are links into /usr.
    rm -rf "$root/bin"
    mkdir -p "$root/usr/bin" "$root/usr/lib" "$root/usr/lib64"
    ln -s usr/bin "$root/bin"
    ln -s usr/lib "$root/lib"
    ln -s usr/lib64 "$root/lib64"
    mapfile -t coreutils < <(dpkg -L coreutils | grep -E '^/(usr/)?bin/')
    copy_with_libs "$root" "${coreutils[@]}" /usr/bin/dash "$py" /usr/bin/env /usr/bin/timeout
    ln -sf dash "$root/usr/bin/sh"
    ln -sf "$(basename "$py")" "$root/usr/bin/python3"
    # python's standard library and its extension modules' libraries.
    local stdlib=/usr/lib/$(basename "$py")
    cp -a "$stdlib" "$root/usr/lib/"
    rm -rf "$root$stdlib"/{test,idlelib,tkinter,turtledemo,ensurepip,lib2to3} "$root$stdlib"/config-*
    local so
    # The JRE's own libraries come with the bind mount; the system ones its headless core needs
    # (libstdc++, libgcc_s, libz) go into the image.
    for so in "$root$stdlib"/lib-dynload/*.so "$JRE_DIR/bin/java" "$JRE_DIR/lib/server/libjvm.so" \
        "$JRE_DIR"/lib/{libjli,libjava,libzip,libjimage,libnio,libnet,libverify}.so; do
        [ -e "$so" ] || continue
        for lib in $(ldd "$so" 2>/dev/null | grep -oE '/[^ ]+'); do
            case $lib in "$JRE_DIR"/*) continue ;; esac
            [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"; }
        done
    done
    [ ! -e "$root/usr/lib/x86_64-linux-gnu/libdl.so.2" ] || die "the glibc test image must not carry libdl.so.2"
    [ -e "$root$IMAGE_PRELOAD" ] || die "the glibc test image lacks $IMAGE_PRELOAD (the preload image names it)"
    umoci repack --image "$work/oci:1" "$work/bundle" >/dev/null
    umoci config --image "$work/oci:1" --config.env PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin --config.cmd /bin/sh
    write_archive glibc 1
    # The same layers, with LD_PRELOAD set by the image's config.
    umoci config --image "$work/oci:1" --tag preload --config.env "LD_PRELOAD=$IMAGE_PRELOAD"
    write_archive preload preload
    rm -rf "$work"
}

# The glibc image's build writes both.
build_preload_image() { build_glibc_image; }

build_musl_image() {
    new_layout musl
    local root=$work/bundle/rootfs src=$BERTH_ROOT/scripts/images/musl-clock.c
    command -v musl-gcc >/dev/null || die "musl-gcc is missing: scripts/lib/install.sh installs musl-tools"
    musl-gcc -O2 -o "$root/bin/musl-clock" "$src"
    musl-gcc -O2 -static -o "$root/bin/musl-clock-static" "$src"
    mkdir -p "$root/lib"
    cp -L /lib/ld-musl-x86_64.so.1 "$root/lib/ld-musl-x86_64.so.1"
    finish_layout musl --config.entrypoint /bin/musl-clock
}

build_clock_image() {
    new_layout clock
    local root=$work/bundle/rootfs src=$BERTH_ROOT/agents/faketime/testdata applet
    cp /bin/busybox "$root/bin/busybox"
    for applet in sh cat date sleep mv; do
        ln -sf busybox "$root/bin/$applet"
    done
    musl-gcc -O2 -static -pthread -o "$root/clockprobe-musl" "$src/clockprobe.c"
    CGO_ENABLED=0 GO111MODULE=off GOCACHE=$work/gocache go build -o "$root/clockprobe-go" "$src/clockprobe.go"
    rm -rf "$work/gocache"
    finish_layout clock --config.cmd /clockprobe-go
}

# build_images [NAME...] — the named test images (default: all) that are missing from the cache
# (all are rebuilt when a recipe changed).
build_images() {
    mkdir -p "$IMAGES_DIR"
    local recipe_hash name wanted=("$@")
    [ ${#wanted[@]} -gt 0 ] || wanted=("${TEST_IMAGES[@]}")
    recipe_hash=$(cat "$BERTH_ROOT/scripts/lib/images.sh" "$BERTH_ROOT/scripts/images/"*.c \
        "$BERTH_ROOT"/agents/faketime/testdata/clockprobe.* | sha256sum | cut -c1-16)
    if [ "$(cat "$IMAGES_DIR/recipe" 2>/dev/null)" != "$recipe_hash" ]; then
        rm -f "$IMAGES_DIR"/*.tar
        echo "$recipe_hash" >"$IMAGES_DIR/recipe"
    fi
    for name in "${wanted[@]}"; do
        [ -f "$IMAGES_DIR/$name.tar" ] && continue
        log "building image $(image_ref "$name")"
        "build_${name}_image" || die "building image $name failed"
    done
}
