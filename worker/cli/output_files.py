"""Files the CLI writes (``report --output``, ``datasets export --output``): checked, then atomic.

Invariants: a target is never a symbolic link or a directory; an existing file is replaced only
with ``force``; the content goes to a temp file in the target's folder, is fsynced, then renamed
over the target (``os.replace``; without ``force`` a hard link, which refuses an existing file),
so a reader sees the old file or the whole new one, and a failure leaves no partial or temp file.
Every problem is a ``ConfigError`` with one line that names the path; the CLI exits 2.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from consumers.errors import ConfigError


def format_for(path: str | None, explicit: str | None, by_suffix: Mapping[str, str],
               default: str) -> str:
    """The output format: ``explicit`` (``--format``) if given, else the one the file's
    extension names, else ``default``. A ``--format`` that contradicts the extension is an
    error."""
    implied = by_suffix.get(Path(path).suffix.lower()) if path else None
    if explicit is not None and implied is not None and explicit != implied:
        raise ConfigError(f"--format {explicit} contradicts the extension of {path} "
                          f"({Path(path or '').suffix} is {implied}): drop --format or change "
                          "the file name")
    return explicit or implied or default


def check_target(path: str, *, force: bool) -> Path:
    """``path`` as a writable output file, or a ConfigError that says why not."""
    target = Path(path)
    folder = target.parent
    if target.is_symlink():
        raise ConfigError(f"cannot write {path}: it is a symbolic link (give the real path)")
    if target.is_dir():
        raise ConfigError(f"cannot write {path}: it is a directory")
    if not folder.exists():
        raise ConfigError(f"cannot write {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise ConfigError(f"cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: permission denied in the folder {folder}")
    if target.exists() and not force:
        raise ConfigError(f"{path} already exists: use --force to replace it")
    return target


@contextlib.contextmanager
def atomic_output(path: str, *, force: bool) -> Iterator[Path]:
    """Yield a temp path in the target's folder; once the block has written it, fsync it and
    put it in place. On any failure (of the block too) the temp file is removed."""
    target = check_target(path, force=force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)  # mkstemp makes the file 0600; the result gets the usual mode
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _put_in_place(tmp, target, path, force=force)
        _fsync_folder(target.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {_reason(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _put_in_place(tmp: Path, target: Path, path: str, *, force: bool) -> None:
    if target.is_symlink():  # appeared since the check
        raise ConfigError(f"cannot write {path}: it is a symbolic link (give the real path)")
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # fails if the target exists: no check-then-write race
    except FileExistsError:
        raise ConfigError(f"{path} already exists: use --force to replace it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if target.exists():  # a file system without hard links
            raise ConfigError(f"{path} already exists: use --force to replace it") from None
        os.replace(tmp, target)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible everywhere; the rename is atomic regardless
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return (exc.strerror or str(exc)).lower()


def write_text(path: str, text: str, *, force: bool) -> None:
    with atomic_output(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
