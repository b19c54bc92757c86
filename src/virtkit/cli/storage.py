"""virsh's pool-* and vol-* commands.

Long operations (clone, import/convert, upload, download) show a progress bar
on stderr (rich, imported only for them) and print the result when done.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from virtkit.cli import objects, render
from virtkit.cli.client import ApiError, Client
from virtkit.cli.commands import add_command
from virtkit.cli.domains import _read_spec_file

CHUNK = 1024 * 1024


class _Bar(Protocol):
    def update(self, completed: float) -> None: ...


def _pool_path(pool: str, suffix: str = "") -> str:
    return f"/v1/pools/{quote(pool, safe='')}{suffix}"


def _vol_path(pool: str, volume: str, suffix: str = "") -> str:
    return _pool_path(pool, f"/volumes/{quote(volume, safe='')}{suffix}")


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.2f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{size} B"


@contextmanager
def progress_bar(label: str, total: float) -> Iterator[_Bar]:
    """A rich progress bar on stderr (plain lines when stderr is not a terminal)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bytes_mode = total > 100
    columns: list[Any] = [BarColumn(), TaskProgressColumn()]
    if bytes_mode:
        columns += [DownloadColumn(binary_units=True), TransferSpeedColumn()]
    columns.append(TimeRemainingColumn())
    with Progress(f"[bold]{label}", *columns, transient=False,
                  console=_stderr_console()) as progress:
        task = progress.add_task(label, total=total)

        class Bar:
            def update(self, completed: float) -> None:
                progress.update(task, completed=completed)

        yield Bar()


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


# -- pools ----------------------------------------------------------------------


def cmd_pool_define_as(client: Client, args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {"name": args.name, "type": args.type}
    for key in ("target", "source_path", "source_name", "auth_username", "auth_secret_uuid"):
        if getattr(args, key):
            spec[key] = getattr(args, key)
    hosts = [h for given in args.source_host or [] for h in given.split(",") if h]
    if args.type == "rbd":
        if args.auth_type not in (None, "ceph"):
            raise ApiError(400, {"message": f"--auth-type {args.auth_type}: rbd pools "
                                 "authenticate with cephx", "fix": "use --auth-type ceph"})
        if hosts:
            port = f":{args.source_port}" if args.source_port else ""
            spec["source_hosts"] = [h if ":" in h or not port else h + port for h in hosts]
    elif hosts:
        if len(hosts) > 1:
            raise ApiError(400, {"message": "only rbd pools take several --source-host",
                                 "fix": "give one NFS server"})
        spec["source_host"] = hosts[0]
    if args.source_dev:
        spec["source_devices"] = args.source_dev
    result = client.post("/v1/pools", {"spec": spec})
    print(f"Pool {result['name']} defined")
    return 0


def cmd_pool_define(client: Client, args: argparse.Namespace) -> int:
    result = objects.define(client, "/v1/pools", _read_spec_file(args.file), force=args.force)
    print(f"Pool {result['name']} defined from {args.file}")
    return 0


def cmd_pool_dumpxml(client: Client, args: argparse.Namespace) -> int:
    return objects.dumpxml(client, _pool_path(args.pool, "/xml"))


def cmd_pool_simple(client: Client, args: argparse.Namespace) -> int:
    action = args.command.removeprefix("pool-")
    result = client.post(_pool_path(args.pool, f"/{action}"))
    words = {"build": "built", "start": "started", "destroy": "destroyed",
             "delete": "deleted", "refresh": "refreshed"}
    print(f"Pool {result['name']} {words[action]}")
    return 0


def cmd_pool_undefine(client: Client, args: argparse.Namespace) -> int:
    return objects.undefine(client, _pool_path(args.pool), "Pool")


def cmd_pool_autostart(client: Client, args: argparse.Namespace) -> int:
    return objects.set_autostart(client, _pool_path(args.pool), "Pool", disable=args.disable)


def cmd_pool_list(client: Client, args: argparse.Namespace) -> int:
    pools = client.get("/v1/pools?all=" + ("1" if args.all else "0"))
    if args.json:
        render.as_json(pools)
        return 0
    headers = ["Name", "State", "Autostart"]
    rows = [[p["name"], p["state"], "yes" if p["autostart"] else "no"] for p in pools]
    if args.details:  # virsh's columns (its State is running/inactive here), then Type
        headers = ["Name", "State", "Autostart", "Persistent", "Capacity", "Allocation",
                   "Available", "Type"]
        rows = [[p["name"], "running" if p["state"] == "active" else "inactive",
                 "yes" if p["autostart"] else "no", "yes", _human(p["capacity"]),
                 _human(p["allocation"]), _human(p["available"]), p["type"]] for p in pools]
    render.table(headers, rows)
    return 0


def cmd_pool_info(client: Client, args: argparse.Namespace) -> int:
    info = client.get(_pool_path(args.pool))
    if args.json:
        render.as_json(info)
        return 0
    # virsh's fields in its order and width, then virtkit's own
    render.keyvalues([
        ("Name", info["name"]), ("UUID", info["uuid"]),
        ("State", "running" if info["state"] == "active" else "inactive"),
        ("Persistent", "yes"), ("Autostart", "yes" if info["autostart"] else "no"),
        ("Capacity", _human(info["capacity"])), ("Allocation", _human(info["allocation"])),
        ("Available", _human(info["available"])),
        ("Type", info["type"]), ("Target", info["target"]),
    ], width=15)
    return 0


# -- volumes ----------------------------------------------------------------------


def _pool_of(args: argparse.Namespace) -> str:
    if args.pool:
        return str(args.pool)
    raise ApiError(400, {"message": "which pool? pass --pool NAME",
                         "fix": "see 'virtkit pool-list'"})


def cmd_vol_create_as(client: Client, args: argparse.Namespace) -> int:
    body = {"name": args.name, "capacity": args.capacity,
            "prealloc": args.prealloc_metadata or args.prealloc}
    if args.format:
        body["format"] = args.format
    if args.backing_vol:
        body["backing"] = args.backing_vol
    if args.backing_vol_format:
        check_backing_format(client, args.pool, args.backing_vol, args.backing_vol_format)
    result = client.post(_pool_path(args.pool, "/volumes"), body)
    print(f"Vol {result['name']} created")
    return 0


def check_backing_format(client: Client, pool: str, backing: str | None, fmt: str) -> None:
    """virsh's ``--backing-vol-format``: the overlay records the backing volume's known
    format; a different one given here is refused rather than silently ignored."""
    if not backing:
        raise ApiError(400, {"message": "--backing-vol-format needs --backing-vol",
                             "fix": "name the backing volume with --backing-vol NAME"})
    known = client.get(_vol_path(pool, backing))["format"]
    if fmt != known:
        raise ApiError(400, {"message": f"--backing-vol-format {fmt}: volume '{backing}' "
                             f"is {known}", "fix": f"use --backing-vol-format {known}, or "
                             "leave it out (the known format is recorded)"})


def cmd_vol_list(client: Client, args: argparse.Namespace) -> int:
    volumes = client.get(_pool_path(args.pool, "/volumes"))
    if args.json:
        render.as_json(volumes)
        return 0
    headers = ["Name", "Path"]
    rows = [[v["name"], v["path"]] for v in volumes]
    if args.details:  # virsh's Type, Capacity, Allocation, then virtkit's own
        headers += ["Type", "Capacity", "Allocation", "Format", "Used by"]
        rows = [[*row, vol_type(v), _human(v["capacity"]), _human(v["allocation"]),
                 v["format"], ", ".join(v["used_by"]) or "-"]
                for row, v in zip(rows, volumes, strict=True)]
        if any(v.get("label") for v in volumes):  # install media: show the ISO labels
            headers.append("Label")
            rows = [[*row, v.get("label") or "-"] for row, v in zip(rows, volumes, strict=True)]
    render.table(headers, rows)
    return 0


def vol_type(volume: dict[str, Any]) -> str:
    """virsh's volume Type: ``block`` for a device (an LVM volume), else ``file``."""
    return "block" if str(volume.get("path") or "").startswith("/dev/") else "file"


def cmd_vol_info(client: Client, args: argparse.Namespace) -> int:
    info = client.get(_vol_path(_pool_of(args), args.vol))
    if args.json:
        render.as_json(info)
        return 0
    # virsh's fields in its order and width, then virtkit's own
    render.keyvalues([
        ("Name", info["name"]), ("Type", vol_type(info)),
        ("Capacity", _human(info["capacity"])), ("Allocation", _human(info["allocation"])),
        ("Pool", info["pool"]), ("Path", info["path"]), ("Format", info["format"]),
        ("Backing", info.get("backing")), ("Label", info.get("label")),
        ("Used by", ", ".join(info["used_by"]) or None),
    ], width=15)
    return 0


def cmd_vol_path(client: Client, args: argparse.Namespace) -> int:
    print(client.get(_vol_path(_pool_of(args), args.vol))["path"])
    return 0


def cmd_vol_delete(client: Client, args: argparse.Namespace) -> int:
    suffix = "?force=1" if args.force else ""
    client.request("DELETE", _vol_path(_pool_of(args), args.vol) + suffix)
    print(f"Vol {args.vol} deleted")
    return 0


def cmd_vol_resize(client: Client, args: argparse.Namespace) -> int:
    client.post(_vol_path(_pool_of(args), args.vol, "/resize"),
                {"capacity": args.capacity, "shrink": args.shrink})
    print(f"Size of volume '{args.vol}' successfully changed to {args.capacity}")
    return 0


def cmd_vol_wipe(client: Client, args: argparse.Namespace) -> int:
    client.post(_vol_path(_pool_of(args), args.vol, "/wipe"))
    print(f"Vol {args.vol} wiped")
    return 0


def post_with_progress(client: Client, path: str, body: dict[str, Any] | None,
                       label: str, method: str = "POST") -> Any:
    """A request with NDJSON progress, drawing a bar; return the result or raise its error."""
    from virtkit.cli.streaming import open_stream

    result: Any = None
    done = False
    with open_stream(client, method, path, body, accept="application/x-ndjson") as response, \
            progress_bar(label, 100) as bar:
        for raw in response:
            line = json.loads(raw)
            if "progress" in line:
                bar.update(line["progress"])
            elif "error" in line:
                raise ApiError(int(line["error"].get("status", 500)), line["error"])
            else:
                bar.update(100)
                result, done = line["result"], True
    if not done:
        raise ApiError(500, {"message": "the daemon ended the operation without a result"})
    return result


def cmd_vol_clone(client: Client, args: argparse.Namespace) -> int:
    body = {"name": args.newname, "linked": args.linked}
    result = post_with_progress(client, _vol_path(_pool_of(args), args.vol, "/clone"), body,
                     f"cloning {args.vol}")
    kind = "linked clone" if args.linked else "clone"
    print(f"Vol {result['name']} cloned from {args.vol} ({kind})")
    return 0


def cmd_vol_import(client: Client, args: argparse.Namespace) -> int:
    source = str(Path(args.source).absolute())
    body = {"name": args.name, "source": source}
    if args.format:
        body["format"] = args.format
    result = post_with_progress(client, _pool_path(args.pool, "/import"), body,
                     f"converting {os.path.basename(source)}")
    print(f"Vol {result['name']} created in pool {args.pool} "
          f"({result['format']}, {_human(result['capacity'])})")
    return 0


def cmd_vol_upload(client: Client, args: argparse.Namespace) -> int:
    from virtkit.cli.streaming import send_file

    path = Path(args.file)
    size = path.stat().st_size
    with open(path, "rb") as source:
        result = _by_descriptor(client, _vol_path(_pool_of(args), args.vol, "/upload-fd"),
                                source.fileno(), f"uploading {path.name}")
        if result is None:  # the daemon cannot take our descriptor: stream the bytes
            with progress_bar(f"uploading {path.name}", max(size, 1)) as bar:
                result = send_file(client, "PUT",
                                   _vol_path(_pool_of(args), args.vol, "/upload"),
                                   source, size, bar.update)
    print(f"Uploaded {_human(result['uploaded'])} to {result['pool']}/{result['name']}")
    return 0


def _by_descriptor(client: Client, path: str, fd: int, label: str) -> dict[str, Any] | None:
    """Let a local daemon copy to or from our open file ``fd`` inside the kernel; None
    when it cannot take the descriptor or is remote (then the caller streams).

    The request says who we are (pid, boot id), so a daemon reached through a forwarded
    socket, whose peer is sshd and not us, refuses instead of taking sshd's descriptor.
    """
    if client.remote:
        return None
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot_id = handle.read().strip()
    except OSError:
        boot_id = ""
    body = {"fd": fd, "client": {"pid": os.getpid(), "boot_id": boot_id}}
    try:
        result: dict[str, Any] = post_with_progress(client, path, body, label)
        return result
    except ApiError as exc:
        if exc.code == "unsupported":
            return None
        raise


def cmd_vol_download(client: Client, args: argparse.Namespace) -> int:
    from virtkit.cli.streaming import open_stream

    target = Path(args.file)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with open(partial, "wb") as out:
            fast = _by_descriptor(client, _vol_path(_pool_of(args), args.vol, "/download-fd"),
                                  out.fileno(), f"downloading {args.vol}")
        if fast is not None:
            os.replace(partial, target)
            print(f"Downloaded {args.vol} to {target}")
            return 0
        with open_stream(client, "GET", _vol_path(_pool_of(args), args.vol, "/download")) \
                as response, open(partial, "wb") as out:
            total = int(response.getheader("Content-Length") or 0)
            buffer = memoryview(bytearray(4 * CHUNK))  # one buffer, no bytes per read
            with progress_bar(f"downloading {args.vol}", max(total, 1)) as bar:
                done = 0
                while count := response.readinto(buffer):
                    out.write(buffer[:count])
                    done += count
                    bar.update(done)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    print(f"Downloaded {args.vol} to {target}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the pool-* and vol-* commands."""
    add = functools.partial(add_command, sub)

    p = add("pool-define", cmd_pool_define, "define a pool from a YAML or JSON file, or from "
            "libvirt pool XML ('-' = stdin)", "file")
    p.add_argument("--force", action="store_true",
                   help="libvirt XML: drop what virtkit cannot honour, with a warning each")
    add("pool-dumpxml", cmd_pool_dumpxml, "print a pool as libvirt storage pool XML", "pool")
    p = add("pool-define-as", cmd_pool_define_as,
            "define a pool: dir, logical (LVM), iso, shared-dir, netfs (nfs) or rbd (Ceph)",
            "name", "type")
    p.add_argument("--target",
                   help="dir/iso/shared-dir: the folder; logical: the volume group name; "
                        "netfs: nfs://SERVER/PATH (or give --source-host/--source-path); "
                        "rbd: rbd://[USER@]MON[,MON...]/POOL (or give --source-host/"
                        "--source-name)")
    p.add_argument("--source-host", action="append",
                   help="netfs: the NFS server (name or IP address); rbd: a Ceph monitor, "
                        "HOST or HOST:PORT (repeat, or separate with commas)")
    p.add_argument("--source-port", help="rbd: the monitors' port when --source-host has "
                   "none (virsh's flag; default 6789)")
    p.add_argument("--source-name", help="rbd: the Ceph pool")
    p.add_argument("--auth-username", help="rbd: the cephx user (no user: no cephx); its "
                   "key is read from the host's Ceph keyring")
    p.add_argument("--secret-uuid", dest="auth_secret_uuid",
                   help="rbd: libvirt's secret UUID, kept for pool-dumpxml")
    p.add_argument("--auth-type", help="rbd: ceph (the only one)")
    p.add_argument("--source-path", help="netfs: the exported folder on the server")
    p.add_argument("--source-dev", action="append", help="logical: a block device (repeat)")
    for name, text in (("pool-build", "create a pool's storage (mkdir; pvcreate+vgcreate)"),
                       ("pool-start", "activate a pool"),
                       ("pool-destroy", "deactivate a pool (its data stays)"),
                       ("pool-delete", "remove an inactive, empty pool's storage"),
                       ("pool-refresh", "rescan a pool")):
        add(name, cmd_pool_simple, text, "pool")
    add("pool-undefine", cmd_pool_undefine, "remove an inactive pool's definition", "pool")
    p = add("pool-autostart", cmd_pool_autostart, "activate a pool when the daemon starts",
            "pool")
    p.add_argument("--disable", action="store_true")
    p = add("pool-list", cmd_pool_list, "list pools", json_flag=True)
    p.add_argument("--all", action="store_true", help="include inactive pools")
    p.add_argument("--details", action="store_true", help="type and capacity columns")
    add("pool-info", cmd_pool_info, "show a pool's capacity and state", "pool", json_flag=True)

    p = add("vol-create-as", cmd_vol_create_as, "create a volume", "pool", "name", "capacity")
    p.add_argument("--format", choices=["qcow2", "raw"],
                   help="default: raw in an rbd pool, qcow2 elsewhere")
    p.add_argument("--backing-vol", help="a qcow2 overlay on this volume of the pool")
    p.add_argument("--backing-vol-format", help="the backing volume's format (virsh's "
                   "flag; checked against the format the pool knows, which is recorded)")
    p.add_argument("--prealloc-metadata", action="store_true", help="preallocate")
    p.add_argument("--prealloc", action="store_true", help=argparse.SUPPRESS)
    p = add("vol-list", cmd_vol_list, "list a pool's volumes", "pool", json_flag=True)
    p.add_argument("--details", action="store_true")
    for name, func, text in (("vol-info", cmd_vol_info, "show a volume"),
                             ("vol-path", cmd_vol_path, "print a volume's path"),
                             ("vol-delete", cmd_vol_delete, "delete a volume"),
                             ("vol-wipe", cmd_vol_wipe, "overwrite a volume's data")):
        p = add(name, func, text, "vol", json_flag=name == "vol-info")
        p.add_argument("--pool", help="the pool holding the volume")
        if name == "vol-delete":
            p.add_argument("--force", action="store_true",
                           help="delete even if domains use it or volumes are backed by it")
    p = add("vol-resize", cmd_vol_resize, "resize a volume", "vol", "capacity")
    p.add_argument("--pool")
    p.add_argument("--shrink", action="store_true", help="allow making it smaller")
    p = add("vol-clone", cmd_vol_clone, "copy a volume (full, or linked on qcow2 backing)",
            "vol", "newname")
    p.add_argument("--pool")
    p.add_argument("--linked", action="store_true", help="a qcow2 overlay instead of a copy")
    for name in ("vol-import", "vol-convert"):
        p = add(name, cmd_vol_import, "convert a host image (vmdk, vdi, vhdx, qcow2, raw) "
                "into a new volume", "pool", "name", "source")
        p.add_argument("--format", choices=["qcow2", "raw"],
                       help="default: raw in an rbd pool, qcow2 elsewhere")
    for name, func, text in (("vol-upload", cmd_vol_upload, "upload a file into a volume"),
                             ("vol-download", cmd_vol_download, "download a volume to a file")):
        p = add(name, func, text, "vol", "file")
        p.add_argument("--pool")


__all__ = ["register"]
