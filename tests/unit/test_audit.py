"""The audit log file: JSON lines, size-capped rotation, reading back with --since."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from virtkit.api.audit import AuditLog, read_records
from virtkit.cli.main import parse_since
from virtkit.errors import InvalidSpec


def _record(number: int, time: str = "2026-11-30T09:00:00.000Z") -> dict[str, object]:
    return {"time": time, "uid": 0, "gid": 0, "pid": 1, "method": "POST",
            "path": f"/v1/domains/d{number}/start", "object": f"d{number}", "status": 200,
            "ms": 1.0}


def test_records_are_json_lines(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "log" / "audit.log")
    audit.write(_record(1))
    audit.write({**_record(2), "path": "/v1/domains/a\nb"})  # a newline stays inside JSON
    audit.close()
    lines = (tmp_path / "log" / "audit.log").read_text().splitlines()
    assert [json.loads(line)["object"] for line in lines] == ["d1", "d2"]
    assert (tmp_path / "log" / "audit.log").stat().st_mode & 0o777 == 0o640


def test_the_log_is_size_capped_by_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path, max_bytes=2000, backups=2)
    for number in range(200):
        audit.write(_record(number))
    audit.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    assert all((tmp_path / name).stat().st_size < 2000 + 300 for name in files)
    records = list(read_records(path, backups=2))
    numbers = [int(str(r["object"])[1:]) for r in records]
    assert numbers == sorted(numbers) and numbers[-1] == 199  # oldest first, newest kept


def test_since_filters_by_time(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path)
    audit.write(_record(1, "2026-11-30T08:00:00.000Z"))
    audit.write(_record(2, "2026-11-30T10:00:00.000Z"))
    audit.close()
    path.open("a").write("not json\n[1]\n")  # damaged lines are skipped
    since = parse_since("2026-11-30T09:00:00Z", 0)
    assert [r["object"] for r in read_records(path, since=since)] == ["d2"]


def test_since_forms() -> None:
    assert parse_since("30m", 10_000) == 10_000 - 1800
    assert parse_since("2h", 10_000) == 10_000 - 7200
    assert parse_since("1d", 100_000) == 100_000 - 86400
    with pytest.raises(InvalidSpec):
        parse_since("yesterday", 0)
