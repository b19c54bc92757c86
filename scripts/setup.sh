#!/usr/bin/env bash
# virtkit set-up for a fresh Debian 12 machine (run as root, or with sudo).
#
#   scripts/setup.sh demo   install QEMU and virtkit, boot a demo VM, print how to reach it
#   scripts/setup.sh test   install everything the tests need, then run the whole suite
#   scripts/setup.sh packages   list the Debian packages 'test' installs
#
# The Python package goes into a virtual environment at .venv (Debian's system
# Python refuses system-wide pip installs); virtkit and virtkitd are linked into
# /usr/local/bin.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV="$REPO/.venv"
PYTHON=${PYTHON:-python3}

# openssl: 'virtkit tls setup' makes the TLS listener's CA and certificate with it;
# openssh-client: virtkit+ssh:// connections; zstd: the test guest's builder decompresses
# .ko.zst kernel modules with it; qemu-block-extra: QEMU's and qemu-img's nfs:// driver
# and libnfs13, which netfs pools use (storage/netfs.py, storage/libnfs.py), and QEMU's
# rbd: driver (librbd1) for rbd pools; ceph-common: the rbd and ceph commands rbd pools
# and their fencing run (storage/rbd.py, storage/rbdfence.py; no Ceph daemon)
RUNTIME_PACKAGES=(qemu-system-x86 qemu-utils ovmf lvm2 dnsmasq-base nftables iproute2 busybox-static
    cpio kmod osinfo-db python3 python3-venv openssl openssh-client zstd qemu-block-extra
    ceph-common)

# What the tests need besides the runtime packages:
# virtinst: the real virt-install, which tests/unit/test_install_vs_virtinstall.py
# compares 'virtkit install --print-xml' with (libvirt's test driver: it installs
# only libvirt's client library, no libvirtd, and creates nothing); libvirt-clients:
# virt-xml-validate, which checks the XML virtkit writes against libvirt's schemas,
# and libxml2-utils: its xmllint, which virt-xml-validate runs (only a Recommends of
# libvirt-clients, so --no-install-recommends leaves it out)
# grub-pc-bin, grub-common, xorriso, mtools, extlinux, syslinux-common: the test
# installer ISO (virtkit.images.installer) that the unattended-install tests use;
# debootstrap: the Debian cloud image of the --cloud-init test (virtkit.images.debiancloud)
# openssh-server: tests/real/test_remote.py runs a private sshd on 127.0.0.1 (its own
# config, key-only, stopped by PID) for virtkit+ssh:// (the package's own service is
# not needed)
# chromium: the web console's end-to-end tests drive Debian's Chromium through
# Playwright (the Python package from PyPI; it downloads no browser of its own)
# etcd-server: the cluster's etcd members (virtkit cluster init/join start one per
# host; tests/unit/test_etcd_client.py and tests/real/test_cluster.py run real ones);
# Debian starts no service of its own where policy-rc.d forbids it, and the tests
# never use it
# nfs-ganesha, nfs-ganesha-vfs, rpcbind: the NFS server of the netfs pool tests
# (tests/real/nfsserver.py runs them in a network namespace of their own, stopped by
# PID; the packages' services are not used)
# ceph-mon, ceph-osd: the one-node Ceph of the rbd pool tests (tests/real/cephserver.py:
# one monitor and one bluestore OSD on a file in a temporary folder, no cephx, stopped
# by PID; the packages' services are not used)
# libvirt-daemon: libvirtd and its QEMU driver, for scripts/record-virsh-output.sh only,
# which re-records tests/data/virsh/ (real virsh's output, that the tests compare
# virtkit's with) from a private libvirtd in its own namespaces; this package has no
# service and no default network of its own (those are libvirt-daemon-system's), and
# the tests never run libvirtd
# systemd: its systemd-analyze verifies the units in contrib/ (tests/unit/test_units.py;
# systemd need not be PID 1 for that)
TEST_PACKAGES=("${RUNTIME_PACKAGES[@]}" bash virtinst libvirt-clients libxml2-utils grub-pc-bin
    grub-common xorriso mtools extlinux syslinux-common debootstrap openssh-server chromium
    etcd-server nfs-ganesha nfs-ganesha-vfs rpcbind ceph-mon ceph-osd libvirt-daemon
    systemd)

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup.sh: run as root (sudo $0 $*): it installs Debian packages" >&2
        exit 1
    fi
}

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "$@"
}

install_python() {
    local extras=$1
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$REPO$extras"
    # Byte-compile the package once: an editable install has no .pyc files, and where
    # PYTHONDONTWRITEBYTECODE=1 is set Python never writes them, so every CLI call would
    # compile every module it imports again (virtkit --version: 134 ms against 92 ms).
    # Python reads these .pyc files whatever that variable says; a module edited since
    # is compiled in memory until the next compileall (docs/testing.md).
    "$VENV/bin/python" -m compileall -q -j 0 "$REPO/src"
    ln -sf "$VENV/bin/virtkit" /usr/local/bin/virtkit
    ln -sf "$VENV/bin/virtkitd" /usr/local/bin/virtkitd
}

# The systemd units (contrib/): virtkitd.service, and virtkit-guests.service, which
# saves or shuts down the guests at host shutdown before the network and storage go
# (libvirt-guests' job; docs/running-guests.md).  Installed and enabled only where
# systemd is PID 1 (sd_booted: /run/systemd/system); in a container or CI without it
# they are skipped with a message, never a failure.  Not started here: the demo runs
# its own daemon (the next boot, or 'systemctl start virtkitd', starts the unit's).
install_units() {
    if [ ! -d /run/systemd/system ]; then
        echo "setup.sh: systemd is not running as PID 1 here: the units in contrib/ are" \
            "not installed (start virtkitd by hand; docs/running-guests.md)"
        return
    fi
    install -m 0644 contrib/virtkitd.service contrib/virtkit-guests.service \
        /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable virtkitd.service virtkit-guests.service
    echo "setup.sh: installed and enabled virtkitd.service and virtkit-guests.service"
}

demo() {
    need_root demo
    install_packages "${RUNTIME_PACKAGES[@]}"
    install_python ""
    install_units
    "$VENV/bin/python" -m virtkit.images.tinyguest >/dev/null
    exec "$VENV/bin/python" "$REPO/scripts/demo.py"
}

run_tests() {
    need_root test
    install_packages "${TEST_PACKAGES[@]}"
    install_python "[test]"
    "$VENV/bin/python" -m virtkit.images.tinyguest >/dev/null
    "$VENV/bin/python" -m virtkit.images.installer >/dev/null
    "$VENV/bin/python" -m virtkit.images.debiancloud >/dev/null
    echo "== ruff"; "$VENV/bin/ruff" check src tests scripts $([ -d bench ] && echo bench)
    echo "== mypy"; "$VENV/bin/mypy"
    # The unit tier on two workers (pytest-xdist; whole modules per worker, so a module's
    # fixtures are made once): it mostly waits on subprocesses, 97 s -> 59 s here.  The
    # real tier in one process: its tests share the machine's QEMU, network namespaces
    # and the shared Debian guest (docs/testing.md).  Both tiers always run; the exit
    # status is the first failure's.
    local status=0
    echo "== pytest tests/unit"
    "$VENV/bin/python" -m pytest tests/unit -q -p no:cacheprovider --durations=10 \
        -n 2 --dist loadfile || status=$?
    echo "== pytest tests/real"
    "$VENV/bin/python" -m pytest tests/real -q -p no:cacheprovider --durations=25 || {
        local real=$?; [ "$status" -ne 0 ] || status=$real; }
    return "$status"
}

case "${1:-}" in
    demo) demo ;;
    test) run_tests ;;
    # the packages 'test' installs, one a line (tests/unit/test_programs_installed.py
    # checks that every program the code and tests run comes from one of them)
    packages) printf '%s\n' "${TEST_PACKAGES[@]}" ;;
    *) echo "usage: $0 demo|test|packages" >&2; exit 2 ;;
esac
