"""Atomic file writes: temporary file in the same folder, flush + fsync, rename, fsync of the folder.

A process killed at any point leaves either the old file or the new one at the final path, never a partial
file. The temporary file is named ``.tmp-<name>.<random>.tmp`` (hidden, never matching ``*<suffix>`` of the
final name), is removed when the write fails, and may be left behind only by a killed process:
:func:`remove_stale_temps` removes such leftovers. Final files get the ordinary mode ``0666 & ~umask``
(``0644`` under the usual umask), not the private ``0600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".tmp"

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # os.umask can only be read by setting it: restore it at once
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_path` (a killed writer may leave one)."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def temp_target(name: str) -> str | None:
    """The final file name a temporary file ``name`` was written for (``None`` if it is not one)."""
    if not is_temp_name(name):
        return None
    stem = name[len(TEMP_PREFIX):-len(TEMP_SUFFIX)]
    return stem.rsplit(".", 1)[0] if "." in stem else None  # drop mkstemp's random part


def remove_stale_temps(folder: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporary files left in ``folder`` by killed writers; returns the removed paths.

    With ``names``, only the temporaries of those final file names (safe while other processes write other
    files in the same folder); without, every ``.tmp-*.tmp`` file directly in ``folder``. Also removes the
    ``.<name>.<random>.tmp`` files of earlier versions for the given names. One folder listing whatever the
    number of names.
    """
    folder = Path(folder)
    wanted = None if names is None else set(names)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        name = entry.name
        if not name.endswith(TEMP_SUFFIX) or not name.startswith("."):
            continue
        if wanted is None:
            hit = is_temp_name(name)
        else:
            legacy = name[1:-len(TEMP_SUFFIX)].rsplit(".", 1)[0]
            hit = temp_target(name) in wanted or legacy in wanted
        if not hit or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except FileNotFoundError:
            pass
    return removed


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so a rename in it survives a crash; a no-op where folders cannot be opened (Windows)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and some network mounts) refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def _mkstemp(path: Path) -> tuple[int, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    return fd, Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    """Give ``tmp`` (already fsynced) the ordinary file mode, rename it onto ``path`` and fsync the folder."""
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    except OSError:  # best effort: the exception being handled matters more
        pass


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that takes a file name (h5py, safetensors, ...).

    When the block ends normally the file is fsynced and renamed onto ``path``; when it raises (or the
    process is interrupted) the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    fd, tmp = _mkstemp(path)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)  # the writer has closed it: flush its data to disk before the rename
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, flush, fsync, rename, folder fsync)."""
    path = Path(path)
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _commit(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
