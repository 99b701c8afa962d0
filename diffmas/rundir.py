"""What every command that writes a run directory shares: one writer at a time, and no resume
with settings other than those the run was started with.

``diffmas eval``, ``collect`` and ``train`` take :class:`RunLock` on their ``--out`` for as long as
they write there (a second process on the same directory stops at once and says who holds it),
and :func:`check_settings` before they add to what is there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from diffmas.errors import DiffMASError

LOCK = ".lock"


class RunLock:
    """An exclusive lock on a run directory, held until :meth:`release` (or the process ends:
    the kernel drops it, so a killed run never leaves a stale lock)."""

    def __init__(self, out: Path, command: str, name: str = LOCK, shared: bool = False, wait: bool = False):
        """``name``: the lock file (shards of one evaluation each lock their own, see
        :mod:`diffmas.evaluate`); ``shared``: several holders at once, none beside an exclusive
        one; ``wait``: block until the lock is free instead of refusing."""
        self.path = Path(out) / name
        self.command = command
        self.shared, self.wait = shared, wait
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DiffMASError(f"cannot write to {self.path.parent} ({exc.strerror}); choose another --out") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if self.wait else fcntl.LOCK_NB))
        except OSError as exc:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DiffMASError(f"cannot lock {self.path} ({exc.strerror})") from None
            raise DiffMASError(
                f"{self.path.parent} is in use by another process ({holder or 'unknown'}); wait for it to "
                "finish or choose another --out (two writers would mix their records)"
            ) from None
        if not self.shared:  # a shared lock's holders would overwrite each other's line
            os.ftruncate(fd, 0)
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            os.write(fd, f"{self.command}, pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_settings(path: Path, now: dict, fixed: Iterable[str], what: str, before: dict | None = None) -> None:
    """Refuse to continue a run whose saved settings (``path``, JSON) differ from ``now`` in any
    of ``fixed``, naming each difference; then save ``now`` there. ``before``: the values of keys
    that runs of older versions did not save."""
    if path.exists():
        try:
            saved = {**(before or {}), **json.loads(path.read_text())}
        except (OSError, json.JSONDecodeError) as exc:
            raise DiffMASError(f"cannot read the saved settings {path} ({exc}); choose another --out") from None
        changed = [k for k in fixed if saved.get(k) != now.get(k)]
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise DiffMASError(
                f"cannot resume {what} in {path.parent} with different settings ({detail}); use its own "
                f"settings (they are in {path}) or choose another --out"
            )
    write_atomically(path, json.dumps(now, indent=2))


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: a reader or a crash never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
