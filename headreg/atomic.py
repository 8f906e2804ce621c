"""Write a directory all at once: build it beside its final place, then swap it in with one rename. Torch-free.

``atomic_directory(target)`` yields a private staging directory (``mkdtemp``: mode 0700, a random name no
other user can pre-create) in the target's own parent, so the final move is a same-filesystem rename and
a read-only or missing parent fails before any work starts. An existing target is swapped with
``renameat2(RENAME_EXCHANGE)`` where the kernel offers it (the target never disappears, not even for an
instant); elsewhere two renames with SIGTERM/SIGINT/SIGHUP held back for the whole process (every thread)
between them. SIGTERM is turned into an exception while the block runs, so ``finally`` cleanup happens for
it as for Ctrl-C.

The staging directory cannot be swapped under us: in a parent others may write to and that is not sticky,
another user can rename ``.NAME.PID.*.incoming`` aside and put their own directory under its name, so that
our files go into it and the final rename publishes it. A descriptor opened on the staging directory when
it is created keeps its identity; right before the move (signals held) the name must still be that
directory, owned by this user, and after the move the target must be it, or the write is refused.

A SIGKILLed process cannot clean up: it leaves a hidden ``.NAME.PID.*.incoming`` (or, killed between the
fallback's two renames, ``.NAME.PID.old``) beside the target. The next write to the same target removes
those left by dead processes of the same user (and puts an ``.old`` back if the target is missing).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import SaveLoadError

INCOMING, OLD = "incoming", "old"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
# Errors of the filesystem rather than of the code: they get a message saying what to free or change.
_FS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this filesystem or process limit",
    errno.EROFS: "read-only filesystem",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# Inside the block a permission error may be about reading the source; only these are about the output.
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that cleanup runs; exits like SIGTERM would."""


def is_nonempty(target: Path) -> bool:
    return target.exists() and (not target.is_dir() or any(target.iterdir()))


def _leftover_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(\d+)\.(?:[A-Za-z0-9_]+\.)?({INCOMING}|{OLD})$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_leftovers(target: Path) -> list[Path]:
    """Remove what dead writers of ``target`` left beside it; return what was removed or restored.

    Only hidden entries named like ours (``.NAME.PID[.random].incoming|old``), owned by this user, whose PID
    is not a live process: another user's files, a live export's staging and anything else are left alone.
    A missing target with an ``.old`` leftover (killed between the two fallback renames) gets it back.
    """
    pattern = _leftover_pattern(target.name)
    handled: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return handled
    for entry in sorted(entries):
        match = pattern.match(entry.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            info = entry.lstat()
        except OSError:
            continue
        if info.st_uid != os.getuid() or _pid_alive(int(match.group(1))):
            continue
        if match.group(2) == OLD and not os.path.lexists(target) and stat.S_ISDIR(info.st_mode):
            with contextlib.suppress(OSError):
                entry.rename(target)
                handled.append(entry)
                continue
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry)
            else:
                entry.unlink()  # a symlink is removed, never followed
            handled.append(entry)
    return handled


def filesystem_error(exc: BaseException) -> OSError | None:
    """The write error (disk full, read-only, ...) behind ``exc``, following its cause/context chain.

    Exporters wrap what they catch (torch.onnx reports a full disk as a failed export), so the chain is searched.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_ERRORS:
            return current
        # Rust-backed writers (safetensors, tokenizers) report io errors as text: "... (os error 28)".
        code = re.search(r"\(os error (\d+)\)", str(current))
        if code and int(code.group(1)) in _WRITE_ERRORS:
            return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
        current = current.__cause__ or current.__context__
    return None


def _fs_message(error: OSError, where: Path) -> str:
    reason = _FS_ERRORS.get(error.errno or 0, error.strerror or str(error))
    advice = {
        **dict.fromkeys((errno.ENOSPC, errno.EDQUOT), "free some space there or write somewhere else"),
        errno.EFBIG: "raise the file-size limit (ulimit -f) or write somewhere else",
    }.get(error.errno or 0, "choose a directory you can write to")
    return f"cannot write {where}: {reason} ({error.filename or where}); nothing was written. {advice.capitalize()}."


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


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold back SIGTERM/SIGINT/SIGHUP for the whole process until the block ends, then deliver them.

    Blocking them in this thread (``pthread_sigmask``) is not enough: the kernel hands a process-directed signal
    to any thread that does not block it (onnxruntime, torch and tokenizers start several), and a signal whose
    action is the default kills every thread at once. A signal's *handler* is process-wide, so from the main
    thread the block installs handlers that only record the signal (CPython runs Python handlers in the main
    thread, between two bytecodes, so the recording cannot interrupt the move either), then restores the
    previous handlers and raises each recorded signal again, which then does what it would have done. Outside
    the main thread handlers cannot be changed: there the signals are blocked in the calling thread only.
    """
    held = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    if threading.current_thread() is not threading.main_thread():
        if not hasattr(signal, "pthread_sigmask"):
            yield
            return
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        return
    caught: list[int] = []
    previous = {number: signal.signal(number, lambda signum, frame: caught.append(signum)) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(caught):
            signal.raise_signal(number)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where the kernel or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap(new: Path, target: Path) -> None:
    if not os.path.lexists(target):
        new.rename(target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old directory
        return
    old = target.with_name(f".{target.name}.{os.getpid()}.{OLD}")
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)  # never leave the user with neither the old nor the new directory
        raise
    shutil.rmtree(old, ignore_errors=True)


def _apply_umask(root: Path, root_fd: int) -> None:
    """Give every file and directory the mode a plain open()/mkdir() would (mkdtemp and some writers use 0600).

    A bundle or model written by one user (a Docker build as root) must be readable by the user that serves it.
    The root (``root_fd``: the staging directory as created) opens up last, right before the move.
    """
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(folder, name), 0o777 & ~mask, follow_symlinks=False)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)
    os.fchmod(root_fd, 0o777 & ~mask)


def check_target(
    target: str | os.PathLike,
    *,
    overwrite: bool,
    replaceable: Callable[[Path], bool] | None = None,
    what: str = "directory",
    protect: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Refuse a target that must not be written or replaced; return it as an absolute path.

    Refused: a target that is, or contains, one of ``protect`` (the source being exported); a file or a
    symlink; a non-empty directory without ``overwrite``; with ``overwrite``, a non-empty directory that
    ``replaceable`` does not recognise (a directory of documents is never deleted for a misspelt ``-o``).
    """
    target = Path(target).absolute()
    real = Path(os.path.realpath(target))
    for source in protect:
        if source is None:
            continue
        real_source = Path(os.path.realpath(source))
        if real == real_source or real in real_source.parents:
            raise SaveLoadError(
                f"{target} is {'' if real == real_source else 'a directory containing '}the "
                f"source being written from ({source}); writing there would destroy it. Choose another output directory."
            )
    if target.is_symlink() or (os.path.lexists(target) and not target.is_dir()):
        raise SaveLoadError(f"{target} exists and is not a directory; remove it or choose another output directory")
    if is_nonempty(target):
        if not overwrite:
            raise SaveLoadError(
                f"{target} exists and is not empty; pass --overwrite (Python: overwrite=True) to replace it"
            )
        if replaceable is not None and not replaceable(target):
            raise SaveLoadError(
                f"{target} is not empty and is not a {what}, so overwrite does not replace it (it only replaces "
                f"a {what}). Remove the directory yourself if you mean to, or choose another output directory."
            )
    return target


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike,
    *,
    overwrite: bool,
    replaceable: Callable[[Path], bool] | None = None,
    what: str = "directory",
    protect: Iterable[str | os.PathLike | None] = (),
) -> Iterator[Path]:
    """Yield an empty private staging directory; on success it replaces ``target``, on any failure it vanishes.

    The target is checked first (:func:`check_target`) and left untouched until the new directory is
    complete. Filesystem failures (disk full, read-only, no permission) become a SaveLoadError naming the
    place and what to do.
    """
    target = check_target(target, overwrite=overwrite, replaceable=replaceable, what=what, protect=protect)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=f".{INCOMING}", dir=target.parent))
    except OSError as exc:
        raise SaveLoadError(_fs_message(exc, target)) from exc
    # The staging directory as created (0700, ours): a descriptor keeps its identity whatever its name becomes.
    staging = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    replaced = False
    try:
        try:
            with _sigterm_raises():
                yield tmp
            # In a parent others may write to (and not sticky), another user can rename our staging directory
            # aside and put theirs under its name: checked before its modes are set and right before the move.
            replaced = not _is_staging(tmp, staging)
            if not replaced:
                _apply_umask(tmp, staging)
            swapped = False
            try:
                with _signals_held():
                    replaced = replaced or not _is_staging(tmp, staging)
                    if not replaced:
                        _swap(tmp, target)
                        swapped = True
                        replaced = not _is_staging(target, staging)
                    if replaced:
                        raise SaveLoadError(_swapped_message(tmp, target, what, moved=swapped))
            except KeyboardInterrupt as exc:
                if swapped:  # Ctrl-C was held back until the move completed: the new directory is in place
                    exc.written = target  # type: ignore[attr-defined]
                raise
        except BaseException as exc:
            cause = filesystem_error(exc)
            if cause is not None and not isinstance(exc, SaveLoadError):
                raise SaveLoadError(_fs_message(cause, target)) from exc
            raise
    finally:
        os.close(staging)
        if not replaced:  # a staging path that is not ours any more is left to its owner
            shutil.rmtree(tmp, ignore_errors=True)


def _is_staging(path: Path, staging: int) -> bool:
    """Whether ``path`` is still the directory behind the descriptor ``staging``, owned by this user."""
    try:
        now, ours = path.lstat(), os.fstat(staging)
    except OSError:
        return False
    return (stat.S_ISDIR(now.st_mode) and (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)
            and now.st_uid == os.getuid())


def _swapped_message(tmp: Path, target: Path, what: str, *, moved: bool) -> str:
    where = (f"{target} now holds a directory that is not the one written; remove it and write again"
             if moved else f"nothing was moved to {target}")
    return (
        f"the staging directory {tmp} was replaced by another directory while the {what} was written (someone "
        f"who may write to {target.parent} renamed it); {where}. Write into a directory only you can write to, "
        "or one with the sticky bit (chmod +t)."
    )
