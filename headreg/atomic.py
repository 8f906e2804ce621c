"""Write a directory all at once: build it elsewhere, then rename it into place. Torch-free.

``atomic_directory(target)`` stages beside the target (cheap same-filesystem rename; used by
``save_pretrained``). ``atomic_directory(target, stage_in_temp=True)`` stages in the system temp
directory instead, so even a SIGKILLed process leaves nothing in the target's parent (used by
``headreg export``, which runs long enough to be killed). SIGTERM is turned into an exception while
the block runs, so ``finally`` cleanup happens for it as for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from .errors import SaveLoadError

STAGING_ROOT = "headreg-staging"


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that cleanup runs; exits like SIGTERM would."""


def is_nonempty(target: Path) -> bool:
    return target.exists() and (not target.is_dir() or any(target.iterdir()))


def _staging_root() -> Path:
    root = Path(tempfile.gettempdir()) / STAGING_ROOT
    root.mkdir(parents=True, exist_ok=True)
    _remove_orphans(root)
    return root


def _remove_orphans(root: Path) -> None:
    """Remove staging dirs of processes that died without cleanup (SIGKILL, power loss)."""
    for entry in root.iterdir():
        pid = entry.name.split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; across filesystems, copy to a hidden sibling first, then rename."""
    if os.stat(tmp).st_dev == os.stat(target.parent).st_dev:
        _swap(tmp, target)
        return
    sibling = target.with_name(f".{target.name}.{os.getpid()}.incoming")
    try:
        shutil.copytree(tmp, sibling)
        _swap(sibling, target)
    finally:
        shutil.rmtree(sibling, ignore_errors=True)


def _swap(new: Path, target: Path) -> None:
    if target.exists() and target.is_dir():
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        target.rename(old)
        try:
            new.rename(target)
        except BaseException:
            old.rename(target)  # never leave the user with neither the old nor the new directory
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        if target.exists():
            target.unlink()
        new.rename(target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, overwrite: bool, stage_in_temp: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces ``target``, on any failure it vanishes.

    An existing non-empty ``target`` is refused (SaveLoadError) unless ``overwrite=True``, and is left
    untouched until the new directory is complete.
    """
    target = Path(target).absolute()
    if is_nonempty(target) and not overwrite:
        raise SaveLoadError(f"{target} exists and is not empty; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    if stage_in_temp:
        tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=_staging_root()))
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with _sigterm_raises():
            yield tmp
        # mkdtemp creates 0700; a bundle built by one user (a Docker build as root) must be readable by the
        # user that serves it, so give it the permissions a plain mkdir would have.
        tmp.chmod(0o777 & ~_umask())
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
