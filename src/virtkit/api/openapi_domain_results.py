"""The answer types of the domain, device, tuning, limits, managed save, host guests,
virsh and install routes (service/models/), for api/openapi_results.py: one entry per
route whose service method returns a typed result.

``GET /v1/domains`` is left out: with ``?cluster=1`` its rows are service/cluster.py's
(other hosts' VMs carry only name, uuid, state, pid and host).
"""

from __future__ import annotations

from typing import Any

from virtkit.service.models import devices, domains, hostguests, install, tuning, virsh

_DOM = "/v1/domains/{ref}"


def domain_result_types() -> dict[tuple[str, str], Any]:
    """(method, path) -> the type its ``200``/``201`` answer carries."""
    info, summary = domains.DomainInfo, domains.DomainSummary
    limits = tuning.SchedInfo | tuning.MemTuneValues | tuning.BlkioTuneValues
    return {
        ("post", "/v1/domains"): info,
        ("post", "/v1/domains/create"): info,
        ("post", "/v1/domains/restore"): info,
        ("get", _DOM): info,
        ("put", _DOM): info,
        ("delete", _DOM): domains.Undefined | domains.UndefinedWithStorage,
        ("get", _DOM + "/spec"): domains.DomainSpecText,
        ("put", _DOM + "/autostart"): domains.Autostart,
        ("post", _DOM + "/start"): info,
        **{("post", f"{_DOM}/{action}"): summary
           for action in ("shutdown", "reboot", "destroy", "suspend", "resume", "reset",
                          "save", "managedsave")},
        ("get", _DOM + "/interfaces"): list[domains.Interface],
        ("post", _DOM + "/interfaces/{nic}/link"): domains.LinkSet,
        ("get", _DOM + "/vnc"): domains.VncDisplay,
        ("delete", _DOM + "/managedsave"): domains.ManagedSaveRemoved,
        ("put", _DOM + "/managedsave/xml"): domains.ManagedSaveDefined,
        ("get", _DOM + "/disks"): list[domains.DiskInfo],
        ("post", _DOM + "/disks"): devices.DiskAttached,
        ("post", _DOM + "/disks/detach"): devices.DiskDetached,
        ("post", _DOM + "/media"): devices.MediaChanged,
        ("post", _DOM + "/interfaces"): devices.InterfaceAttached,
        ("post", _DOM + "/interfaces/detach"): devices.InterfaceDetached,
        ("put", _DOM + "/vcpus"): devices.VcpusSet,
        ("put", _DOM + "/memory"): devices.MemorySet,
        ("post", _DOM + "/memory"): devices.MemoryAttached,
        ("post", _DOM + "/devices/attach"): devices.DeviceChanged,
        ("post", _DOM + "/devices/detach"): devices.DeviceChanged,
        ("get", _DOM + "/vcpupin"): tuning.PinTable,
        ("put", _DOM + "/vcpupin"): tuning.PinTable,
        ("get", _DOM + "/emulatorpin"): tuning.EmulatorPin,
        ("put", _DOM + "/emulatorpin"): tuning.EmulatorPin,
        ("get", "/v1/host/ksm"): tuning.KsmStatus,
        ("put", "/v1/host/ksm"): tuning.KsmStatus,
        ("get", "/v1/host/numa"): tuning.NumaInfo,
        ("get", "/v1/nodedevs"): list[tuning.PciDevice],
        ("get", _DOM + "/limits/{kind}"): limits,
        ("post", _DOM + "/limits/{kind}"): limits,
        ("get", _DOM + "/disks/{disk}/iotune"): tuning.BlkDevIoTune,
        ("post", _DOM + "/disks/{disk}/iotune"): tuning.BlkDevIoTune,
        ("get", "/v1/host/guests"): hostguests.GuestsStatus,
        ("put", "/v1/host/guests"): hostguests.GuestsStatus,
        ("post", _DOM + "/send-key"): virsh.KeysSent,
        ("get", _DOM + "/vcpucount"): virsh.VcpuCount,
        ("get", _DOM + "/blkinfo"): virsh.BlockInfo,
        ("get", _DOM + "/description"): virsh.Description | virsh.Title,
        ("put", _DOM + "/description"): virsh.Description | virsh.Title,
        ("get", _DOM + "/metadata"): virsh.MetadataShown,
        ("put", _DOM + "/metadata"): virsh.MetadataChanged,
        ("get", "/v1/host/cpustats"): virsh.CpuStats,
        ("post", "/v1/install"): install.InstallResult | install.InstallPreview,
        ("get", "/v1/osinfo"): list[install.OsVariant],
    }
