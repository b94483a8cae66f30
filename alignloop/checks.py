"""Checks of what a user hands a command: files to read, folders to write, passwords, addresses.

Each check returns the checked value or raises `UserError` with one message that names the
option, the value, what is wrong and what to do; commands call them at their start, before
any work, so a mistake costs seconds and leaves nothing half-written. Like `alignloop.errors`
this module imports nothing of ours but that, so every layer may use it (the platform
included: no torch here).

    input_file(cfg.train_file, "--train-file")
    output_dir(cfg.output_dir, "--output-dir")
    password = read_password(cfg.password_file, "--password-file")
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from alignloop.errors import UserError


def _named(option: str | None, value: object) -> str:
    return f"{option} {value}" if option else str(value)


def closest(name: str, choices: Iterable[str]) -> str:
    """ "; did you mean X?" for the choice closest to `name`, or "" when none is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def input_file(path: str | Path, option: str | None = None, *, folder_ok: bool = True) -> Path:
    """`path` if it is a readable file (or, with `folder_ok`, a folder, such as a `datasets`
    folder); a `UserError` saying what it is instead otherwise."""
    path = Path(path)
    where = _named(option, path)
    if not path.exists():
        parent = path.parent
        hint = (
            f" (there is no folder {parent})" if str(parent) not in ("", ".") and not parent.is_dir() else ""
        )
        raise UserError(f"{where}: no such file{hint}; check the path")
    if path.is_dir():
        if not folder_ok:
            raise UserError(f"{where}: is a folder, not a file")
        if not os.access(path, os.R_OK | os.X_OK):
            raise UserError(f"{where}: the folder is not readable (permission denied)")
        return path
    if not os.access(path, os.R_OK):
        raise UserError(f"{where}: the file is not readable (permission denied)")
    return path


def output_dir(path: str | Path, option: str | None = None, *, create: bool = True) -> Path:
    """`path`, created if needed, if this process can write files in it; a `UserError` naming
    the option and the first part of the path that stands in the way otherwise. With `create`
    False nothing is made: the nearest folder that exists must be one this process may write in."""
    path = Path(path)
    where = _named(option, path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise UserError(f"{where}: {part} is a file, not a folder; choose another {option or 'folder'}")
    if not create:
        existing = next(part for part in (path, *path.parents, Path(".")) if part.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"{where}: cannot write in {existing} (permission denied)")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{where}: cannot create the folder ({exc.strerror or exc})") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"{where}: cannot write in the folder ({exc.strerror or exc})") from None
    return path


def read_password(path: str | Path, option: str = "--password-file") -> str:
    """The first line of a password file (no surrounding newline), checked: it must exist, be
    readable UTF-8 text, and not start with an empty line."""
    path = input_file(path, option, folder_ok=False)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{option} {path}: not UTF-8 text; put the password on the first line") from None
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise UserError(f"{option} {path}: the first line is empty; put the password on the first line")
    return lines[0]


def http_url(url: str, option: str = "--url") -> str:
    """`url` if it is an http(s) address with a host (and a valid port), without a trailing slash."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UserError(f"{option} {url!r}: not a valid address ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{option} {url!r}: not an http(s) address; give one such as http://127.0.0.1:8000")
    if port == 0:
        raise UserError(f"{option} {url!r}: port 0 is not a port to connect to")
    return url.rstrip("/")
