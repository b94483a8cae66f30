"""Media clips (video, GIF, image) stored by the platform, content-addressed under `media_dir`.

An upload is kept only when its first bytes are those of the type its file name says (PNG, GIF,
JPEG, MP4, WebM), and a stored file is served with the type its bytes show, so no upload reaches
a browser as HTML or script (responses also say `X-Content-Type-Options: nosniff`).
"""

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
SNIFF_BYTES = 12


def sniff(head: bytes) -> str | None:
    """The media type the first bytes of a file show (their "magic numbers"), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[4:8] == b"ftyp":  # ISO base media: a box size, then the file-type box
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML, the container of WebM
        return "video/webm"
    return None


def served_type(path: Path) -> str:
    """The type to serve a stored file with: what its bytes show (files stored before uploads
    were checked included), else a download."""
    with path.open("rb") as file:
        return sniff(file.read(SNIFF_BYTES)) or "application/octet-stream"


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
    found = sniff(data[:SNIFF_BYTES])
    if found != MEDIA_TYPES[suffix]:
        shows = f"{found} content" if found else "content of no supported type"
        raise ValueError(f"body: {filename!r} names a {MEDIA_TYPES[suffix]} file but the upload is {shows}")
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
