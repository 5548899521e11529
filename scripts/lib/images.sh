# Test images, built locally (there is no registry): an OCI layout made with umoci, named and
# turned into an archive by skopeo, imported into each node with `ctr images import`.
#   berth.test/pause:1   static C pause (exits on TERM/INT, reaps children), runs as 65535
#   berth.test/busybox:1 static busybox with every applet linked
#   berth.test/glibc:1   dynamically linked coreutils, dash and python3 from this machine
# shellcheck shell=bash

IMAGES_DIR=$BERTH_CACHE/images
TEST_IMAGES=(pause busybox glibc)

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
    rm -f "$IMAGES_DIR/$name.tar"
    skopeo copy --quiet "oci:$work/oci:1" "docker-archive:$IMAGES_DIR/$name.tar.tmp:$(image_ref "$name")"
    mv "$IMAGES_DIR/$name.tar.tmp" "$IMAGES_DIR/$name.tar"
    rm -rf "$work"
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
    for so in "$root$stdlib"/lib-dynload/*.so; do
        for lib in $(ldd "$so" 2>/dev/null | grep -oE '/[^ ]+'); do
            [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"; }
        done
    done
    finish_layout glibc --config.cmd /bin/sh
}

# build_images — every test image that is missing from the cache (rebuilt when its recipe changed).
build_images() {
    mkdir -p "$IMAGES_DIR"
    local recipe_hash name
    recipe_hash=$(cat "$BERTH_ROOT/scripts/lib/images.sh" "$BERTH_ROOT/scripts/images/pause.c" | sha256sum | cut -c1-16)
    if [ "$(cat "$IMAGES_DIR/recipe" 2>/dev/null)" != "$recipe_hash" ]; then
        rm -f "$IMAGES_DIR"/*.tar
        echo "$recipe_hash" >"$IMAGES_DIR/recipe"
    fi
    for name in "${TEST_IMAGES[@]}"; do
        [ -f "$IMAGES_DIR/$name.tar" ] && continue
        log "building image $(image_ref "$name")"
        "build_${name}_image" || die "building image $name failed"
    done
}
