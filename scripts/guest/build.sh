#!/usr/bin/env bash
# Build the vnet end-to-end test guest: a Debian cloud kernel and a busybox
# initramfs with the virtio-net modules, a console command session (/init),
# a udhcpc script and small static network helpers.
#
#   scripts/guest/build.sh [CACHE_DIR]      (default: <repo>/.cache/guest)
#   scripts/guest/build.sh --generic [CACHE_DIR]
#                                           (default: <repo>/.cache/guest/generic)
#
# --generic builds the second image: Debian's generic kernel (linux-image-amd64)
# with the drivers of QEMU's other NIC models (e1000, e1000e, e100, 8139cp,
# 8139too, ne2k-pci, pcnet32, vmxnet3, tulip) besides virtio_net. The package
# ships no modules.dep (its postinst makes one), so depmod runs over the
# unpacked tree and the load order (dependencies first) comes from that file.
# The initramfs lists the order in /etc/vnet-modules; /init loads them so.
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
FLAVOR=cloud
if [ "${1:-}" = --generic ]; then FLAVOR=generic; shift; fi
if [ $FLAVOR = generic ]; then
    CACHE=${1:-$REPO/.cache/guest/generic}
    KMETA=linux-image-amd64
    KSUFFIX=amd64
else
    CACHE=${1:-$REPO/.cache/guest}
    KMETA=linux-image-cloud-amd64
    KSUFFIX=cloud-amd64
fi

log() { echo "guest/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
need() {
    command -v "$1" >/dev/null 2>&1 ||
        die "'$1' not found; install the apt packages listed in scripts/guest/APT-PACKAGES"
}
for tool in apt-cache apt-get dpkg gcc cpio gzip sha256sum flock ldd; do need "$tool"; done
[ $FLAVOR = cloud ] || { need depmod; need xz; }
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

if [ $FLAVOR = generic ]; then
    # The drivers wanted; their dependencies are added from modules.dep.
    MODULES="virtio_pci virtio_net e1000 e1000e e100 8139cp 8139too ne2k-pci pcnet32 vmxnet3 tulip"
else
    # Loaded by /init in this order.
    MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net"
fi
# Shipped but not loaded: 802.1Q for VLAN tests (insmod in this order), tun.
EXTRA_MODULES="llc stp garp mrp 8021q tun"

# ---------------------------------------------------------------- kernel
# One apt-cache call (apt-cache is slow without pkgcache.bin, as in Docker
# images): the metapackage pins the image package, "Depends: NAME (= VERSION)".
KPKG=${VNET_GUEST_KERNEL_PKG:-}
KVER=
if [ -z "$KPKG" ]; then
    read -r KPKG KVER < <(apt-cache show --no-all-versions "$KMETA" 2>/dev/null |
        sed -n "s/^Depends:.*\\(linux-image-[0-9][^ ,]*-$KSUFFIX\\)\\( (= \\([^)]*\\))\\)\\{0,1\\}.*/\\1 \\3/p" | head -n1) || true
fi
if [ -n "$KPKG" ] && [ -z "$KVER" ]; then
    KVER=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | awk '/^Version:/ { print $2; exit }')
fi
if [ -z "$KPKG" ] || [ -z "$KVER" ]; then
    # Offline or no apt lists: keep using a complete cached kernel if there is one.
    cached=$(ls -d "$CACHE"/kernel/*/.complete 2>/dev/null | head -n1)
    [ -n "$cached" ] || die "cannot resolve $KMETA to a package (run apt-get update)"
    base=$(basename "$(dirname "$cached")")
    KPKG=${base%%_*}
    rest=${base#*_}
    KVER=${rest%_*}
    log "warning: apt cannot resolve $KMETA; using cached $KPKG $KVER"
fi
KEYEXTRA=
if [ $FLAVOR = generic ]; then KEYEXTRA=" vmlinux"; fi
KKEY=$(echo "$KPKG $KVER $MODULES $EXTRA_MODULES$KEYEXTRA" | sha256sum | cut -c1-12)
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
    if [ $FLAVOR = generic ]; then
        # The generic bzImage is xz-compressed, which TCG takes about 6 s to unpack at every boot. The
        # kernel has CONFIG_PVH, so QEMU boots the ELF inside it directly: keep that (xz reports the bytes
        # after the stream as corrupt; the ELF before them is whole, and is checked below).
        off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$KDIR.new/vmlinuz" | head -n1 | cut -d: -f1)
        [ -n "$off" ] || die "no xz stream in the vmlinuz of $KPKG"
        tail -c +$((off + 1)) "$KDIR.new/vmlinuz" | xz -dc >"$KDIR.new/vmlinux" 2>/dev/null || true
        [ "$(head -c 4 "$KDIR.new/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] ||
            die "cannot unpack the ELF kernel from the vmlinuz of $KPKG"
        grep -q '^CONFIG_PVH=y' "$KDIR.new/config" || die "$KPKG has no CONFIG_PVH: QEMU cannot boot its ELF"
    fi
    if [ $FLAVOR = generic ]; then
        # modules.dep lists every module's dependencies, transitively, in the
        # reverse of their load order (modprobe loads the last one first).
        release=$(cd "$WORK"/x/lib/modules && ls)
        depmod -b "$WORK/x" "$release" || die "depmod over $KPKG failed"
        LOAD=$(awk -v want="$MODULES" '
            BEGIN { n = split(want, w, " ") }
            { key = $1; sub(/:$/, "", key); name = key; sub(/.*\//, "", name); sub(/\.ko$/, "", name)
              line[name] = $0 }
            function add(m) { if (!(m in seen)) { seen[m] = 1; out = out " " m } }
            END {
                for (i = 1; i <= n; i++) {
                    if (!(w[i] in line)) { print "MISSING " w[i]; exit 1 }
                    k = split(line[w[i]], f, " ")
                    for (j = k; j >= 2; j--) { d = f[j]; sub(/.*\//, "", d); sub(/\.ko$/, "", d); add(d) }
                    add(w[i])
                }
                print out
            }' "$WORK/x/lib/modules/$release/modules.dep") || die "modules.dep of $KPKG: $LOAD"
    else
        LOAD=$MODULES
    fi
    for m in $LOAD $EXTRA_MODULES; do
        ko=$(find "$WORK/x/lib/modules" -name "$m.ko" | head -n1)
        [ -n "$ko" ] || die "module $m.ko not in $KPKG"
        cp "$ko" "$KDIR.new/modules/"
    done
    printf '%s\n' $LOAD >"$KDIR.new/load-order"
    (cd "$WORK"/x/lib/modules && ls) >"$KDIR.new/release"
    chmod -R a+rX "$KDIR.new"
    touch "$KDIR.new/.complete"
    mv "$KDIR.new" "$KDIR"
    rm -rf "$WORK/dl" "$WORK/x"
    # Drop kernels of older package versions.
    for d in "$CACHE"/kernel/*; do [ "$d" = "$KDIR" ] || rm -rf "$d"; done
fi
KERNEL_FILE=vmlinuz
[ $FLAVOR = generic ] && KERNEL_FILE=vmlinux
if ! cmp -s "$KDIR/$KERNEL_FILE" "$CACHE/$KERNEL_FILE"; then
    install -m 0644 "$KDIR/$KERNEL_FILE" "$CACHE/$KERNEL_FILE.new"
    mv "$CACHE/$KERNEL_FILE.new" "$CACHE/$KERNEL_FILE"
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
    # Kernels cached before load-order existed are the cloud one with $MODULES.
    if [ -f "$KDIR/load-order" ]; then cp "$KDIR/load-order" "$R/etc/vnet-modules"
    else printf '%s\n' $MODULES >"$R/etc/vnet-modules"; fi
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
echo "VMLINUZ=$CACHE/$KERNEL_FILE"
echo "INITRD=$CACHE/initrd.gz"
