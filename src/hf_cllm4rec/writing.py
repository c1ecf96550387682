"""
Writes that leave a file or folder whole or as it was: prepared data sets, id mappings, exported embeddings, the
folders `save_for_hub` writes and the command line's outputs all go through here.

Everything is written to a hidden staging path beside the target (`.NAME.<random>.tmp`), which takes the target's
place by a rename once complete. A failure, or SIGTERM (in the main thread), removes the staging path and leaves the
target as it was; staging paths that a killed process left behind are removed by the next write to the same target.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

# A staging path no file of which changed for this long belongs to a write that was killed.
STALE_STAGING_SECONDS = 60


@contextmanager
def replaced_folder(path: str | os.PathLike, check: Callable[[], None] | None = None) -> Iterator[Path]:
    """
    A new, empty staging folder to write into, which takes the place of the folder `path` when the block ends without
    an error: a folder already at `path` is replaced as a whole. `check` runs again right before the rename, so that a
    folder that changed meanwhile (see [`foreign_entries`]) is not replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    staging = staging_path(path)
    replaced = staging.with_name(staging.name + ".old")
    with sigterm_raises() as hold_sigterm:
        try:
            staging.mkdir()
            yield staging
            if check is not None:
                check()
            if path.exists() or path.is_symlink():
                path.rename(replaced)
            staging.rename(path)
        finally:
            hold_sigterm()
            if (replaced.exists() or replaced.is_symlink()) and not path.exists():  # stopped between the renames
                replaced.rename(path)
            shutil.rmtree(staging, ignore_errors=True)
            remove(replaced)


@contextmanager
def replaced_files(folder: str | os.PathLike, superseded: re.Pattern | None = None) -> Iterator[Path]:
    """
    A new, empty staging folder whose files, when the block ends without an error, each take the place of the file of
    the same relative path in the folder `folder` (created if needed); of the rest of `folder`, the files whose
    relative path matches `superseded` are removed, the others stay. No file there is ever half-written, and a
    failure or SIGTERM inside the block leaves `folder` as it was.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder)
    staging = staging_path(folder)
    with sigterm_raises() as hold_sigterm:
        try:
            staging.mkdir()
            yield staging
            hold_sigterm()  # the files move in together: a SIGTERM now ends the process once they have
            folder.mkdir(exist_ok=True)
            written = {path.relative_to(staging) for path in staging.rglob("*") if path.is_file()}
            for relative in sorted(written):
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / relative, folder / relative)
            for path in folder.rglob("*") if superseded is not None else ():
                relative = path.relative_to(folder)
                if relative not in written and path.is_file() and superseded.fullmatch(relative.as_posix()):
                    path.unlink()
        finally:
            hold_sigterm()
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def replaced_file(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """A file opened for writing that takes the place of `path` once fully written and closed."""
    path = Path(path)
    remove_stale_staging(path)
    staging = staging_path(path)
    if "b" not in mode:
        open_kwargs = {"encoding": "utf-8", "newline": "", **open_kwargs}
    with sigterm_raises() as hold_sigterm:
        try:
            with staging.open(mode, **open_kwargs) as file:
                yield file
            os.replace(staging, path)
        finally:
            hold_sigterm()
            staging.unlink(missing_ok=True)


def foreign_entries(folder: Path, files: re.Pattern, folders: re.Pattern) -> list[str]:
    """
    The entries of `folder` that a writer of this package did not write, as sorted relative POSIX paths: files whose
    relative path does not match `files`, folders whose relative path does not match `folders`, and links.
    """
    foreign = []
    for entry in sorted(folder.rglob("*")):
        relative = entry.relative_to(folder).as_posix()
        if entry.is_symlink():
            foreign.append(relative)
        elif entry.is_dir():
            if not folders.fullmatch(relative):
                foreign.append(relative)
        elif not entry.is_file() or not files.fullmatch(relative):
            foreign.append(relative)
    # the contents of a foreign folder are not listed beside it
    return sorted(entry for entry in foreign if not any(entry.startswith(f"{other}/") for other in foreign))


def listed(entries: list[str], shown: int = 5) -> str:
    """The first `shown` of `entries`, comma-separated, with the number of the others."""
    return ", ".join(entries[:shown]) + (f" and {len(entries) - shown} more" if len(entries) > shown else "")


def staging_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def remove_stale_staging(path: Path) -> None:
    """Removes the staging paths of `path` that a killed write left, judging by how long nothing in them changed."""
    for staging in path.parent.glob(f".{glob.escape(path.name)}.{'[0-9a-f]' * 32}.tmp*"):
        try:
            stale = time.time() - last_change(staging) > STALE_STAGING_SECONDS
        except OSError:  # removed meanwhile by the write it belongs to
            continue
        if stale:
            remove(staging)


def remove(path: Path) -> None:
    """Removes a file, link or folder tree if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def last_change(path: Path) -> float:
    """The latest modification time of `path` and, for a folder, of everything in it."""
    times = [path.lstat().st_mtime]
    for root, names, files in os.walk(path):
        times += [os.lstat(os.path.join(root, name)).st_mtime for name in (*names, *files)]
    return max(times)


class _Terminated(BaseException):
    """SIGTERM arrived during a write; a `BaseException`, so that no `except Exception` swallows it."""


@contextmanager
def sigterm_raises() -> Iterator[Callable[[], None]]:
    """
    In the main thread, SIGTERM inside the block raises `_Terminated` (once), so that `finally` clauses clean up; the
    block gets a function that holds any later SIGTERM back, for its clean-up. On leaving the block the previous
    handler comes back and, if a SIGTERM came, it is sent again: by default the process then ends as it would have.
    """
    state = {"armed": True, "received": False}

    def hold() -> None:
        state["armed"] = False

    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is None or previous == signal.SIG_IGN:  # not ours to handle
        yield hold
        return

    def terminate(signum, frame):
        state["received"] = True
        if state["armed"]:
            state["armed"] = False
            raise _Terminated

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield hold
    except _Terminated:
        raise InterruptedError("the write was interrupted by SIGTERM") from None
    finally:
        state["armed"] = False
        signal.signal(signal.SIGTERM, previous)
        if state["received"]:
            signal.raise_signal(signal.SIGTERM)


__all__ = ["foreign_entries", "replaced_file", "replaced_files", "replaced_folder", "sigterm_raises"]
