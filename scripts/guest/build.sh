#!/usr/bin/env bash
# Build the vnet end-to-end test guest: a Debian cloud kernel and a busybox
# initramfs with the virtio-net modules, a console command session (/init),
# a udhcpc script and small static network helpers.
#
#   scripts/guest/build.sh [CACHE_DIR]      (default: <repo>/.cache/guest)
#
# Outputs CACHE_DIR/vmlinuz and CACHE_DIR/initrd.gz and prints their paths as
# VMLINUZ=... / INITRD=... on stdout. Idempotent: the kernel is keyed by the
# package name+version (+ module list), the initramfs by a hash of every input
# (this script, init, udhcpc.sh, helpers/*, busybox, iperf3 and its libraries,
# gcc version, kernel). A cached run costs one `apt-cache show` (about 1.5 s
# here, since Docker-style images disable apt's pkgcache.bin) to notice a new
# kernel; offline, the cached kernel is reused. Concurrent runs serialize on
# CACHE_DIR/.lock.
#
# Environment: VNET_GUEST_KERNEL_PKG overrides the kernel package name.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${1:-$REPO/.cache/guest}

log() { echo "guest/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
need() {
    command -v "$1" >/dev/null 2>&1 ||
        die "'$1' not found; install the apt packages listed in scripts/guest/APT-PACKAGES"
}
for tool in apt-cache apt-get dpkg gcc cpio gzip sha256sum flock ldd; do need "$tool"; done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] && "$BUSYBOX" --list >/dev/null 2>&1 ||
    die "$BUSYBOX missing; apt-get install busybox-static"
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static "$BUSYBOX" || die "$BUSYBOX is dynamically linked; apt-get install busybox-static"
need iperf3

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
exec 9>"$CACHE/.lock"
flock 9

WORK=$(mktemp -d "$CACHE/tmp.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net"
# Shipped but not loaded: 802.1Q for VLAN tests (insmod in this order), tun.
EXTRA_MODULES="llc stp garp mrp 8021q tun"

# ---------------------------------------------------------------- kernel
# One apt-cache call (apt-cache is slow without pkgcache.bin, as in Docker
# images): the metapackage pins the image package, "Depends: NAME (= VERSION)".
KPKG=${VNET_GUEST_KERNEL_PKG:-}
KVER=
if [ -z "$KPKG" ]; then
    read -r KPKG KVER < <(apt-cache show --no-all-versions linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^Depends:.*\(linux-image-[^ ,]*-cloud-amd64\)\( (= \([^)]*\))\)\{0,1\}.*/\1 \3/p' | head -n1) || true
fi
if [ -n "$KPKG" ] && [ -z "$KVER" ]; then
    KVER=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | awk '/^Version:/ { print $2; exit }')
fi
if [ -z "$KPKG" ] || [ -z "$KVER" ]; then
    # Offline or no apt lists: keep using a complete cached kernel if there is one.
    cached=$(ls -d "$CACHE"/kernel/*/.complete 2>/dev/null | head -n1)
    [ -n "$cached" ] || die "cannot resolve linux-image-cloud-amd64 to a package (run apt-get update)"
    base=$(basename "$(dirname "$cached")")
    KPKG=${base%%_*}
    rest=${base#*_}
    KVER=${rest%_*}
    log "warning: apt cannot resolve the cloud kernel; using cached $KPKG $KVER"
fi
KKEY=$(echo "$KPKG $KVER $MODULES $EXTRA_MODULES" | sha256sum | cut -c1-12)
KDIR=$CACHE/kernel/${KPKG}_${KVER}_$KKEY

if [ ! -f "$KDIR/.complete" ]; then
    log "fetching $KPKG=$KVER"
    mkdir -p "$WORK/dl"
    # apt drops privileges to _apt for downloads; let it write there.
    chmod 0777 "$WORK/dl"
    (cd "$WORK/dl" && apt-get download -q "$KPKG=$KVER" 2>&1 | { grep -v 'unsandboxed as root' >&2 || true; }) ||
        die "apt-get download $KPKG=$KVER failed"
    deb=$(ls "$WORK"/dl/*.deb)
    dpkg -x "$deb" "$WORK/x"
    rm -rf "$KDIR" "$KDIR.new"
    mkdir -p "$KDIR.new/modules"
    cp "$WORK"/x/boot/vmlinuz-* "$KDIR.new/vmlinuz"
    cp "$WORK"/x/boot/config-* "$KDIR.new/config"
    for m in $MODULES $EXTRA_MODULES; do
        ko=$(find "$WORK/x/lib/modules" -name "$m.ko" | head -n1)
        [ -n "$ko" ] || die "module $m.ko not in $KPKG"
        cp "$ko" "$KDIR.new/modules/"
    done
    (cd "$WORK"/x/lib/modules && ls) >"$KDIR.new/release"
    chmod -R a+rX "$KDIR.new"
    touch "$KDIR.new/.complete"
    mv "$KDIR.new" "$KDIR"
    rm -rf "$WORK/dl" "$WORK/x"
    # Drop kernels of older package versions.
    for d in "$CACHE"/kernel/*; do [ "$d" = "$KDIR" ] || rm -rf "$d"; done
fi
if ! cmp -s "$KDIR/vmlinuz" "$CACHE/vmlinuz"; then
    install -m 0644 "$KDIR/vmlinuz" "$CACHE/vmlinuz.new"
    mv "$CACHE/vmlinuz.new" "$CACHE/vmlinuz"
fi

# ---------------------------------------------------------------- initramfs
IPERF_FILES=$(ldd "$(command -v iperf3)" | awk '/=>/ { print $3 } /^\s*\/lib/ { print $1 }' | sort -u)
IPERF_FILES="$(command -v iperf3) $IPERF_FILES"
KEY=$({
    echo "kernel $KPKG $KVER $KKEY"
    gcc -dumpfullversion
    cd "$HERE" && sha256sum build.sh init udhcpc.sh helpers/*
    sha256sum "$BUSYBOX" $IPERF_FILES
} | sha256sum | cut -c1-16)

if [ -f "$CACHE/initrd.gz" ] && [ "$(cat "$CACHE/initrd.key" 2>/dev/null)" = "$KEY" ]; then
    log "cached ($KPKG $KVER, initrd $KEY)"
else
    log "building initramfs $KEY"
    R=$WORK/root
    mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,lib/modules,var}
    ln -s /run "$R/var/run"
    install -m 0755 "$BUSYBOX" "$R/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        # A /bin/busybox -> busybox link would replace the binary with a loop (ELOOP).
        [ "$applet" = busybox ] && continue
        [ -e "$R/bin/$applet" ] || ln -s busybox "$R/bin/$applet"
    done

    for src in "$HERE"/helpers/*.c; do
        name=$(basename "$src" .c)
        gcc -static -O2 -s -Wall -Wextra -o "$R/bin/$name" "$src" ||
            die "compiling helpers/$name.c failed"
    done

    for f in $IPERF_FILES; do
        mkdir -p "$R$(dirname "$f")"
        cp -L "$f" "$R$f"
    done
    # The target's own ld.so path may be behind the host's /lib64 symlink.
    if [ ! -e "$R/lib64/ld-linux-x86-64.so.2" ]; then
        mkdir -p "$R/lib64"
        cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
    fi

    cp "$KDIR"/modules/*.ko "$R/lib/modules/"
    install -m 0755 "$HERE/init" "$R/init"
    install -m 0755 "$HERE/udhcpc.sh" "$R/etc/udhcpc.sh"
    cat >"$R/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$R/etc/hosts"
    printf 'hosts: files dns\n' >"$R/etc/nsswitch.conf"
    : >"$R/etc/resolv.conf"

    (cd "$R" && find . -print0 | LC_ALL=C sort -z |
        cpio --quiet --null -o -H newc -R 0:0 --reproducible) | gzip -1 >"$WORK/initrd.gz"
    mv "$WORK/initrd.gz" "$CACHE/initrd.gz"
    echo "$KEY" >"$CACHE/initrd.key"
    log "built $(du -h "$CACHE/initrd.gz" | cut -f1) initramfs"
fi

echo "KERNEL_PACKAGE=$KPKG=$KVER"
echo "VMLINUZ=$CACHE/vmlinuz"
echo "INITRD=$CACHE/initrd.gz"
