#!/bin/sh
# Regenerate tests/data/xml/{net,pool}-virsh-*.xml: what virsh 9.0 writes for networks and
# pools, from libvirt's test driver (no libvirtd needed).  net-libvirt-default.xml is
# /etc/libvirt/qemu/networks/default.xml as Debian 12's libvirt-daemon-config-network
# installs it.
set -eu
out=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/isolated.xml" <<'XML'
<network><name>isolated</name><uuid>079e1f8a-c91f-4a76-b75d-85bb0f22a56f</uuid><bridge name='virbr5'/><domain name='lab' localOnly='yes'/><dns><host ip='10.5.0.10'><hostname>db</hostname><hostname>db.lab</hostname></host></dns><ip address='10.5.0.1' prefix='24'><dhcp><range start='10.5.0.100' end='10.5.0.199'><lease expiry='2' unit='hours'/></range><host mac='52:54:00:00:05:10' name='db' ip='10.5.0.10'/></dhcp></ip></network>
XML
cat > "$tmp/vg0.xml" <<'XML'
<pool type='logical'><name>vg0</name><uuid>1b868ac0-8a3a-4dfa-8098-de53bdb9e197</uuid><source><device path='/dev/sdb'/><name>vg0</name></source><target><path>/dev/vg0</path></target></pool>
XML
virsh -q -c test:///default <<EOF2 > "$tmp/all"
net-define $tmp/isolated.xml
net-dumpxml isolated
net-dumpxml default
pool-define $tmp/vg0.xml
pool-dumpxml vg0
pool-dumpxml default-pool
EOF2
# virsh prints one document after another: cut them apart at their root elements
awk -v out="$out" '
  /^<network>/ { n++; file = out "/" (n == 1 ? "net-virsh-isolated.xml" : "net-virsh-default.xml") }
  /^<pool / { p++; file = out "/" (p == 1 ? "pool-virsh-logical.xml" : "pool-virsh-dir.xml") }
  file != "" && /^</ || file != "" && /^ / { print > file }
  /^<\/(network|pool)>/ { close(file); file = "" }
' "$tmp/all"
