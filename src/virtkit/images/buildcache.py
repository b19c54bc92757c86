"""Images built once per machine and recipe, in a staging folder swapped into place.

A build either completes or leaves nothing under its name: it is made in a hidden
sibling folder, gets a ``manifest.json`` naming its recipe last, and only then
replaces the previous build.  A changed recipe (a new version of the build code or
of what it is built from) triggers a rebuild; a current one is reused.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MANIFEST = "manifest.json"


def build_once(root: Path, recipe: str, product: str, build: Callable[[Path], None]) -> None:
    """Make sure ``root`` holds a build of ``recipe`` (``root/product`` present); else
    run ``build(staging)`` to fill an empty staging folder and swap it into place."""
    try:
        current = json.loads((root / MANIFEST).read_text()).get("recipe") == recipe
    except (OSError, ValueError, AttributeError):
        current = False
    if current and (root / product).is_file():
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-build-", dir=root.parent))
    try:
        build(staging)
        (staging / MANIFEST).write_text(json.dumps({"recipe": recipe}) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it 0700; QEMU may run as another user
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
