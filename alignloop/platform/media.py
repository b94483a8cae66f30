"""Media clips (video, GIF, image) stored by the platform, content-addressed under `media_dir`."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from alignloop.feedback.schema import STRIP_COLUMNS

__all__ = ["MEDIA_TYPES", "STRIP_COLUMNS", "media_kind", "path_of", "store"]

MEDIA_TYPES = {
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".gif": "image/gif",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}
NAME = re.compile(r"^[0-9a-f]{32}\.(mp4|webm|gif|png|jpg|jpeg)$")


def media_kind(name: str, frames: int | None = None) -> str:
    """How the labelling page shows a file: 'video', 'strip' (a PNG of `frames` > 1 frames, played
    and stepped frame by frame), or 'image' (a still, or an animated GIF)."""
    suffix = Path(name).suffix
    if suffix in (".mp4", ".webm"):
        return "video"
    return "strip" if suffix == ".png" and frames is not None and frames > 1 else "image"


def store(media_dir: Path, filename: str, data: bytes) -> str:
    """Save `data` and return its platform name (hash + extension); the same bytes give the same name."""
    suffix = Path(filename).suffix.lower()
    if suffix not in MEDIA_TYPES:
        raise ValueError(f"filename: unsupported type {suffix!r}; allowed: {', '.join(sorted(MEDIA_TYPES))}")
    if not data:
        raise ValueError("body: the file is empty")
    name = hashlib.sha256(data).hexdigest()[:32] + suffix
    media_dir.mkdir(parents=True, exist_ok=True)
    target = media_dir / name
    if not target.exists():
        tmp = target.with_suffix(target.suffix + f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return name


def path_of(media_dir: Path, name: str) -> Path | None:
    """The stored file called `name`, or None (also for names that are not platform names)."""
    if not NAME.match(name):
        return None
    path = media_dir / name
    return path if path.is_file() else None
