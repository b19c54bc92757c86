#!/bin/sh
# Regenerate tests/data/xml/vi-*.xml with the virt-install of this machine (Debian 12:
# virtinst 4.1), without libvirtd: virtinst's test URI over libvirt's test driver, with
# the capabilities of a KVM x86_64 host (capabilities.xml, domcapabilities.xml, written
# for this purpose).  'predictable' fixes the uuid and the generated MAC addresses.
# The output is what virt-install would define on a KVM host, byte for byte.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(dirname "$here")
files=/tmp/virtkit-xml-samples
mkdir -p $files
: > $files/debian.iso
truncate -s 10M $files/data.raw
uri="__virtinst_test__test:///default,caps=$here/capabilities.xml,domcaps=$here/domcapabilities.xml,fakeuri=qemu:///system,predictable"
vi() { name=$1; shift; virt-install --connect "$uri" --print-xml 1 --name "$name" --noautoconsole "$@" > "$out/$name.xml"; }

# virt-install's defaults for a Linux guest: spice, sound, USB redirection
vi vi-basic --memory 1024 --vcpus 2 --disk size=1 --import --osinfo debian11
vi vi-uefi-vnc --memory 2048 --vcpus 4,maxvcpus=8,sockets=2,cores=2,threads=2 \
   --cpu host-passthrough --boot uefi \
   --disk path=$files/data.raw,format=raw,bus=sata,cache=none,io=native,serial=DATA1 \
   --network bridge=br0,model=e1000,mac=52:54:00:12:34:56 \
   --graphics vnc,listen=0.0.0.0,port=5901,password=secret,keymap=de \
   --watchdog i6300esb,action=poweroff --osinfo linux2022 --import
vi vi-kernel-pc --memory 512 --machine pc \
   --boot kernel=/boot/vmlinuz,initrd=/boot/initrd.img,kernel_args="console=ttyS0 quiet" \
   --disk path=$files/data.raw --graphics none --network none --osinfo linux2022 --import
vi vi-cdrom-install --memory 1024 --cdrom $files/debian.iso \
   --disk pool=default-pool,size=2,format=qcow2 --network network=default --graphics vnc \
   --osinfo debian11
vi vi-windows --memory 4096 --cdrom $files/debian.iso --disk path=$files/data.raw,bus=sata \
   --osinfo win10
vi vi-pc-legacy --memory 768 --machine pc --cpu qemu64,+avx2,-svm \
   --disk path=$files/data.raw,bus=ide,format=raw,cache=unsafe \
   --disk path=$files/debian.iso,device=cdrom,bus=ide \
   --network bridge=br0,model=rtl8139,mac=52:54:00:00:00:01 --graphics vnc,listen=::1 \
   --watchdog default --rng /dev/random --boot network,hd --serial pty --serial pty \
   --console pty,target_type=serial --memballoon none --osinfo linux2022 --import
