"""Files written all-or-nothing through fresh 0600 temp files in the target folder, then renamed."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Collection, Mapping
from pathlib import Path

NAME_MAX = 255  # bytes in one file name component (Linux)
PATH_MAX = 4096  # bytes in a whole path (Linux)
_TEMP_PREFIX = ".authsim-"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file: 0600 from its first byte, never through a symlink, never into a file that
    someone else made (a new temp file in the same folder, fsynced, then renamed onto `path`)."""
    write_all({path: data})


def write_all(files: Mapping[Path, bytes], public: Collection[Path] = ()) -> None:
    """Write every file or none: each goes to a new temp file (O_EXCL, O_NOFOLLOW, 0600) in its folder,
    then all are renamed into place. On any error no temp file and none of `files` is left, and the
    OSError names the file that failed. Files in `public` become 0644 before they are renamed."""
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
    staged: dict[Path, tuple[Path, os.stat_result]] = {}
    placed: list[tuple[Path, os.stat_result]] = []
    try:
        for path, data in files.items():
            staged[path] = _stage(path, data, 0o644 if path in public else 0o600)
        for path, (temp, written) in list(staged.items()):
            _rename(temp, path)
            del staged[path]
            placed.append((path, written))
    except BaseException:
        for temp, _ in staged.values():
            temp.unlink(missing_ok=True)
        for path, written in placed:
            _unlink_if_ours(path, written)
        raise
    for folder in {p.parent for p in files}:
        _fsync_dir(folder)


def name_problems(paths: Collection[Path], field: str) -> list[str]:
    """`field: ...` for each path whose file name or whole length the file system would refuse."""
    problems = []
    for path in paths:
        name, whole = len(os.fsencode(path.name)), len(os.fsencode(path.absolute()))
        if name > NAME_MAX:
            shown, size, limit = path.name, name, f"a file name at most {NAME_MAX}"
        elif whole >= PATH_MAX:
            shown, size, limit = str(path), whole, f"a path at most {PATH_MAX - 1}"
        else:
            continue
        problems.append(f"{field}: {shown[:40]!r}... is {size} bytes long; {limit} bytes allowed")
    return problems


def _stage(path: Path, data: bytes, mode: int) -> tuple[Path, os.stat_result]:
    """A new temp file beside `path` holding `data`, fsynced; its name is short whatever `path` is."""
    temp = path.parent / f"{_TEMP_PREFIX}{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(temp, _CREATE, 0o600)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # exact whatever the umask; widened only for public files
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            written = os.fstat(f.fileno())
    except BaseException as e:
        temp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    return temp, written


def _rename(temp: Path, path: Path) -> None:
    """Rename `temp` onto `path`: a symlink or a file someone else made at `path` is replaced, not used."""
    try:
        os.replace(temp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def _unlink_if_ours(path: Path, written: os.stat_result) -> None:
    """Remove `path` if it is still the file this process wrote (not one put there since)."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(now.st_mode) and (now.st_dev, now.st_ino) == (written.st_dev, written.st_ino):
        path.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable; best effort, as the files are in place whatever this returns."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
