#!/usr/bin/env bash
# Record real virsh's output for the objects virtkit's tests create, into
# tests/data/virsh/ (tests/unit/test_virsh_recorded.py and tests/real/test_virsh_output.py
# compare virtkit's output with these files by form; CI never runs libvirtd).
#
#   scripts/record-virsh-output.sh [OUTDIR]     (as root; default tests/data/virsh)
#
# Needs Debian's libvirt-daemon (libvirtd and its QEMU driver, no service of its own)
# and libvirt-clients (virsh), plus QEMU and the tiny test guest
# (python -m virtkit.images.tinyguest).  libvirtd runs only while this script does,
# inside its own mount and network namespaces: /etc/libvirt, /run/libvirt and
# /var/{lib,cache,log}/libvirt are private empty tmpfs there, so the host's libvirt
# configuration (its default network, autostart links) is neither read nor changed,
# and the isolated network's bridge, dnsmasq and firewall rules exist only in that
# namespace.  The guest runs under TCG with no way out of the namespace.  On exit
# the domains are destroyed and undefined and libvirtd is stopped by its PID.
#
# Every file is the command's stdout (FILE.out) or stderr (FILE.err), verbatim, after
# a header of '# ' lines naming the virsh version, the command and its exit status.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=$(realpath -m "${1:-tests/data/virsh}")

if [ -z "${VIRSH_RECORD_INNER:-}" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "record-virsh-output.sh: run as root: libvirtd's QEMU driver needs it" >&2
        exit 1
    fi
    exec unshare --mount --net --propagation private \
        env VIRSH_RECORD_INNER=1 "$REPO/scripts/record-virsh-output.sh" "$OUT"
fi

# --- inside the namespaces -------------------------------------------------------------
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
GUEST=$(PYTHONPATH="$REPO/src" "$PYTHON" -c \
    'from virtkit.images.tinyguest import build_tiny_guest; print(build_tiny_guest().kernel.parent)')
[ -f "$GUEST/vmlinuz" ] || { echo "no tiny guest in $GUEST" >&2; exit 1; }

for dir in /etc/libvirt /run /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
    mkdir -p "$dir"
    mount -t tmpfs -o mode=0755 tmpfs "$dir"
done
mkdir -p /etc/libvirt/qemu /run/libvirt
WORK=$(mktemp -d /var/lib/libvirt/record.XXXXXX)
ip link set lo up

cat >/etc/libvirt/libvirtd.conf <<'EOF'
unix_sock_group = "root"
log_outputs = "3:stderr"
EOF
# no cgroups, no security driver, no virtlogd: nothing of the host's changes
cat >/etc/libvirt/qemu.conf <<'EOF'
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
remember_owner = 0
EOF

LIBVIRTD_PID=
cleanup() {
    set +e
    for dom in rec rec-off; do
        virsh -q destroy "$dom" >/dev/null 2>&1
        virsh -q undefine "$dom" --snapshots-metadata >/dev/null 2>&1
    done
    virsh -q net-destroy rec-net >/dev/null 2>&1
    virsh -q net-undefine rec-net >/dev/null 2>&1
    virsh -q pool-destroy rec-pool >/dev/null 2>&1
    virsh -q pool-undefine rec-pool >/dev/null 2>&1
    if [ -n "$LIBVIRTD_PID" ]; then
        kill "$LIBVIRTD_PID"
        wait "$LIBVIRTD_PID"
    fi
}
trap cleanup EXIT

libvirtd --config /etc/libvirt/libvirtd.conf 2>"$WORK/libvirtd.log" &
LIBVIRTD_PID=$!
for _ in $(seq 100); do
    virsh -c qemu:///system uri >/dev/null 2>&1 && break
    sleep 0.1
done
export LIBVIRT_DEFAULT_URI=qemu:///system

VERSION=$(virsh --version)
LIBVIRT=$(virsh version 2>/dev/null | sed -n 's/^Using library: //p')
QEMU=$(qemu-system-x86_64 --version | head -n1)
mkdir -p "$OUT"
rm -f "$OUT"/*.out "$OUT"/*.err

# record NAME virsh-args...: stdout to NAME.out, stderr (when any) to NAME.err
record() {
    local name=$1; shift
    local status=0
    virsh "$@" >"$WORK/stdout" 2>"$WORK/stderr" || status=$?
    header=$(printf '# virsh %s (%s; %s; TCG)\n# $ virsh %s\n# exit %s' \
        "$VERSION" "$LIBVIRT" "$QEMU" "$*" "$status")
    { echo "$header"; cat "$WORK/stdout"; } >"$OUT/$name.out"
    if [ -s "$WORK/stderr" ]; then
        { echo "$header"; cat "$WORK/stderr"; } >"$OUT/$name.err"
    fi
}

# --- the objects: a dir pool with a qcow2 volume, an isolated network, a running
# tiny guest (disk, empty CD-ROM, NIC, VNC, balloon) and a shut-off one, snapshots
cat >"$WORK/net.xml" <<'EOF'
<network>
  <name>rec-net</name>
  <bridge name='virbr-rec'/>
  <ip address='192.168.250.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.250.10' end='192.168.250.50'/></dhcp>
  </ip>
</network>
EOF
virsh -q net-define "$WORK/net.xml"
virsh -q net-start rec-net
mkdir -p "$WORK/pool"
virsh -q pool-define-as rec-pool dir --target "$WORK/pool"
virsh -q pool-start rec-pool
virsh -q vol-create-as rec-pool rec.qcow2 32M --format qcow2

domain_xml() {
    local name=$1 disk=$2
    cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <title>tiny</title>
  <memory unit='MiB'>128</memory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$GUEST/vmlinuz</kernel>
    <initrd>$GUEST/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet loglevel=3</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='rec-net'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'/>
    <graphics type='vnc' port='-1' listen='127.0.0.1'/>
    <memballoon model='virtio'><stats period='1'/></memballoon>
  </devices>
</domain>
EOF
}
domain_xml rec "$WORK/pool/rec.qcow2" >"$WORK/rec.xml"
qemu-img create -q -f qcow2 "$WORK/off.qcow2" 16M
domain_xml rec-off "$WORK/off.qcow2" | sed "s/12:34:56/12:34:57/" >"$WORK/rec-off.xml"
virsh -q define "$WORK/rec.xml" >/dev/null
virsh -q define "$WORK/rec-off.xml" >/dev/null
virsh -q snapshot-create-as rec s1 --description "shut off" >/dev/null
record dominfo-shutoff dominfo rec
record domstate-shutoff domstate rec
record domstate-reason-shutoff domstate rec --reason
virsh -q start rec
# a lease for the NIC, as dnsmasq's helper writes it (the guest has no DHCP client)
cat >/var/lib/libvirt/dnsmasq/virbr-rec.status <<EOF
[
  {
    "ip-address": "192.168.250.23",
    "mac-address": "52:54:00:12:34:56",
    "hostname": "rec",
    "client-id": "01:52:54:00:12:34:56",
    "expiry-time": $(( $(date +%s) + 3600 ))
  }
]
EOF
virsh -q snapshot-create-as rec s2 >/dev/null
sleep 2   # one balloon stats period, so that dommemstat has its guest figures

record version version
record help help
record list list
record list-all list --all
record list-inactive list --inactive
record list-name list --all --name
record list-uuid list --all --uuid
record list-id list --id
record list-title list --all --title
record list-state-running list --state-running
record list-state-shutoff list --state-shutoff
record list-state-paused list --state-paused
record list-uuid-name list --all --uuid --name
record dominfo dominfo rec
record dominfo-off dominfo rec-off
record domstate domstate rec
record domstate-reason domstate rec --reason
record domstate-off-reason domstate rec-off --reason
record domid domid rec
record domuuid domuuid rec
record domname domname 1
record domstats domstats rec
record domstats-off domstats rec-off
record domstats-state domstats --state
record nodeinfo nodeinfo
record net-info net-info rec-net
record net-list net-list --all
record net-dhcp-leases net-dhcp-leases rec-net
record pool-info pool-info rec-pool
record pool-list pool-list --all
record pool-list-details pool-list --all --details
record vol-info vol-info --pool rec-pool rec.qcow2
record vol-list vol-list rec-pool
record vol-list-details vol-list rec-pool --details
record snapshot-list snapshot-list rec
record snapshot-list-parent snapshot-list rec --parent
record snapshot-list-name snapshot-list rec --name
record snapshot-current-name snapshot-current rec --name
record domblklist domblklist rec
record domblklist-details domblklist rec --details
record domiflist domiflist rec
record domifaddr domifaddr rec
record vcpuinfo vcpuinfo rec
record vcpucount vcpucount rec
record vcpucount-off vcpucount rec-off
record domblkinfo domblkinfo rec vda
record domblkinfo-all domblkinfo rec --all
record domblkstat domblkstat rec vda
record domifstat domifstat rec vnet0
record dommemstat dommemstat rec
record vncdisplay vncdisplay rec
record error-missing-domain dominfo nosuch
record error-missing-argument dominfo
record error-unknown-command nosuchcommand
record error-unknown-option dominfo rec --nosuch
record error-start-running start rec
virsh -q suspend rec
record list-paused list --state-paused
record dominfo-paused dominfo rec
record domstate-reason-paused domstate rec --reason
virsh -q destroy rec
record domstate-reason-destroyed domstate rec --reason
record list-all-destroyed list --all
echo "recorded $(ls "$OUT" | wc -l) files in $OUT with virsh $VERSION"
