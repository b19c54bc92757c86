"""The answer types of the storage, block job and migration routes, for api/openapi_results.py
(kept apart so each area's list stays beside its own models)."""

from __future__ import annotations

from typing import Any

from virtkit.service.models import blockjobs, migrations, storage

_POOL, _VOL = "/v1/pools/{pool}", "/v1/pools/{pool}/volumes/{volume}"
_BLOCK = "/v1/domains/{ref}/blockjobs/{disk}"
_JOB, _MIGRATION = "/v1/domains/{ref}/job", "/v1/migrations/{id}"


def store_result_types() -> dict[tuple[str, str], Any]:
    """(method, path) -> the type its ``200``/``201`` answer carries."""
    pool_changes = {("post", "/v1/pools"), ("get", _POOL), ("put", _POOL + "/autostart"),
                    *(("post", f"{_POOL}/{action}")
                      for action in ("build", "start", "destroy", "delete", "refresh"))}
    volume_changes = {("post", _POOL + "/volumes"), ("get", _VOL), ("post", _VOL + "/resize"),
                      ("post", _VOL + "/wipe"), ("post", _VOL + "/clone"),
                      ("post", _POOL + "/import"), ("put", _VOL + "/upload"),
                      ("post", _VOL + "/upload-fd")}
    return {
        ("get", "/v1/pools"): list[storage.PoolInfo],
        **{key: storage.PoolInfo for key in pool_changes},
        ("delete", _POOL): storage.PoolRemoved,
        ("get", _POOL + "/volumes"): list[storage.VolumeInfo],
        **{key: storage.VolumeInfo for key in volume_changes},
        ("delete", _VOL): storage.VolumeDeleted,
        ("post", _VOL + "/download-fd"): storage.VolumeDownloaded,
        **{(method, path): blockjobs.BlockJob for method, path in (
            ("post", _BLOCK + "/commit"), ("post", _BLOCK + "/pull"),
            ("post", _BLOCK + "/copy"), ("get", _BLOCK), ("post", _BLOCK))},
        ("post", _BLOCK + "/resize"): blockjobs.BlockResized,
        ("post", "/v1/domains/{ref}/migrate"): migrations.MigrationResult,
        ("post", "/v1/migrations/incoming"): migrations.IncomingStarted,
        ("post", "/v1/migrations/offline"): migrations.IncomingStarted,
        ("get", _MIGRATION): migrations.IncomingStatus,
        ("delete", _MIGRATION): migrations.IncomingRemoved,
        ("get", _JOB): migrations.JobInfo,
        ("delete", _JOB): migrations.JobAborted,
        ("post", _JOB + "/postcopy"): migrations.PostcopyRequested,
    }
