"""Parent side of the sandbox's kernel isolation: what the child's private filesystem holds, the
memory cgroup of a whole run, and removing what a run left behind without being fooled by it.

The child (``harness.py``) builds its filesystem from :func:`jail_entries`: a fresh tmpfs as ``/``
holding read-only binds of the system directories and of the interpreter's own prefixes, a
private ``/dev`` with the harmless device nodes, private tmpfs ``/tmp``, ``/var/tmp``,
``/dev/shm`` and work directory, and ``/proc``. Nothing else of the host is visible: not home
directories, not the data files, not the project's source.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import time
from pathlib import Path

WORK_INSIDE = "/sandbox"  # the program's working directory inside its filesystem
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_DEV_LINKS = (("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
              ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"))  # fmt: skip
_prefixes: dict[str, list[str]] = {}


def interpreter_paths(python: str) -> list[str]:
    """Directories the interpreter ``python`` needs to start and import its libraries: its
    prefixes (a venv's and its base's) and any site directory outside them. Asked of the
    interpreter itself, once."""
    if python not in _prefixes:
        code = (
            "import json, site, sys\n"
            "paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]\n"
            "paths += [p for p in sys.path if 'site-packages' in p or 'dist-packages' in p]\n"
            "print(json.dumps(paths))\n"
        )
        out = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=True)
        paths = [os.path.realpath(p) for p in json.loads(out.stdout)]
        paths += [os.path.dirname(os.path.realpath(python)), os.path.dirname(os.path.abspath(python))]
        _prefixes[python] = paths
    return _prefixes[python]


def _minimal(paths: list[str]) -> list[str]:
    """Existing directories, without those inside another one of the list or inside /usr."""
    found = sorted({p for p in paths if p not in ("", "/") and os.path.isdir(p)})
    kept: list[str] = []
    for p in found:
        if not any(p == k or p.startswith(k + os.sep) for k in kept + ["/usr"]):
            kept.append(p)
    return kept


def jail_entries(python: str, memory_mb: int) -> list[list[str]]:
    """The child's filesystem, in the order it is built: ``[kind, source, target, options]`` with
    kind ``ro`` (read-only bind), ``dev`` (bind of a device node), ``symlink``, ``tmpfs`` or
    ``proc``. Tmpfs sizes are capped by the run's memory (their pages count against it)."""
    entries: list[list[str]] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            entries.append(["symlink", os.readlink(d), d, ""])
        elif os.path.isdir(d):
            entries.append(["ro", d, d, ""])
    entries += [["ro", f, f, ""] for f in _SYSTEM_FILES if os.path.isfile(f)]
    entries.append(["tmpfs", "", "/dev", "mode=0755,size=64k"])
    entries += [["dev", d, d, ""] for d in _DEVICES if os.path.exists(d)]
    entries += [["symlink", src, dst, ""] for src, dst in _DEV_LINKS]
    size = f"size={max(memory_mb, 16)}m"
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        entries.append(["tmpfs", "", d, f"mode=1777,{size},nr_inodes=65536"])
    # After the private /tmp: an interpreter installed under /tmp (a venv in a clone there) is
    # mounted into it, not hidden by it.
    entries += [["ro", p, p, ""] for p in _minimal(interpreter_paths(python))]
    entries.append(["tmpfs", "", WORK_INSIDE, f"mode=0700,{size},nr_inodes=65536"])
    entries.append(["proc", "", "/proc", ""])
    return entries


# --------------------------------------------------------------------------- memory cgroup
class MemoryCgroup:
    """A memory cgroup for one run: every process of the program counts against one limit
    (RLIMIT_AS only bounds each process). Made below the parent's own cgroup, v2 or v1,
    where the parent may write there; otherwise :meth:`create` returns None."""

    def __init__(self, path: Path, events: Path, counter: str):
        self.path, self._events, self._counter = path, events, counter

    @property
    def procs(self) -> str:
        return str(self.path / "cgroup.procs")

    @classmethod
    def create(cls, limit_bytes: int) -> MemoryCgroup | None:
        for base, limit_files, events, counter in _cgroup_bases():
            path = base / f"diffmas-sandbox-{secrets.token_hex(6)}"
            try:
                path.mkdir()
            except OSError:
                continue
            group = cls(path, path / events, counter)
            try:
                for name in limit_files:
                    if (path / name).exists():
                        (path / name).write_text(str(limit_bytes))
                group.oom_kills()  # readable, or the counter is missing: not usable
                return group
            except (OSError, ValueError):
                group.remove()
        return None

    def oom_kills(self) -> int:
        for line in self._events.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == self._counter:
                return int(value)
        raise ValueError(f"{self._events} has no {self._counter}")

    def remove(self) -> None:
        # After the kill the processes may need a moment to leave.
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def _cgroup_bases():
    """(directory, limit files, events file, OOM-kill counter) of the parent's memory cgroup."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            yield Path("/sys/fs/cgroup", rel), ("memory.max", "memory.swap.max"), "memory.events", "oom_kill"
        elif "memory" in controllers.split(","):
            limits = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
            yield Path("/sys/fs/cgroup/memory", rel), limits, "memory.oom_control", "oom_kill"


# --------------------------------------------------------------------------- removal
def remove_tree(path: str) -> None:
    """Remove ``path`` and everything below it, whatever the program did to it: symlinks are
    removed, never followed; directories it made unreadable are opened again through their own
    descriptors, so nothing outside the tree is touched; any depth, without recursion and with
    three descriptors open at most (deeper directories are moved up to the top one first)."""
    parent, top = os.path.split(os.path.abspath(path))
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        top_fd = _open_dir(top, parent_fd)
        if top_fd is None:  # replaced by a file or a symlink: remove that, follow nothing
            _quietly(os.unlink, top, dir_fd=parent_fd)
            return
        try:
            queue = _clear(top_fd, top_fd, keep_dirs=True)
            while queue:
                current = queue.pop()
                fd = _open_dir(current, top_fd)
                if fd is None:
                    _quietly(os.unlink, current, dir_fd=top_fd)
                    continue
                try:
                    queue += _clear(fd, top_fd, keep_dirs=False)
                finally:
                    os.close(fd)
                _quietly(os.rmdir, current, dir_fd=top_fd)
        finally:
            os.close(top_fd)
        _quietly(os.rmdir, top, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


def _clear(fd: int, top_fd: int, keep_dirs: bool) -> list[str]:
    """Unlink the files of directory ``fd``; its subdirectories move up into ``top_fd`` (unless
    ``fd`` is the top itself) and their names there are returned."""
    with os.scandir(fd) as entries:
        names = [e.name for e in entries]
    dirs = []
    for name in names:
        if not _is_dir(name, fd):
            _quietly(os.unlink, name, dir_fd=fd)
        elif keep_dirs:
            dirs.append(name)
        else:
            moved = f".deep-{secrets.token_hex(8)}"
            if _quietly(os.rename, name, moved, src_dir_fd=fd, dst_dir_fd=top_fd):
                dirs.append(moved)
    return dirs


def _is_dir(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_dir(name: str, dir_fd: int) -> int | None:
    """A descriptor of directory ``name`` (never through a symlink), made readable and writable
    for its owner first if the program took that away; None if it is not a directory."""
    if not _is_dir(name, dir_fd):
        return None
    handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        if os.stat(handle).st_mode & 0o700 != 0o700:  # the directory itself, never a link's target
            _quietly(os.chmod, f"/proc/self/fd/{handle}", 0o700)
        return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(handle)


def _quietly(func, *args, **kwargs) -> bool:
    """Cleanup never aborts scoring: what cannot be removed stays (and the caller goes on)."""
    try:
        func(*args, **kwargs)
        return True
    except OSError:
        return False


def remove_owned(uid: int, places: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm")) -> None:
    """Remove what the throw-away ``uid`` left in the host's shared temporary directories (only
    where the program ran on the host's filesystem; a private one vanishes with the run)."""
    for place in places:
        try:
            with os.scandir(place) as entries:
                owned = [e.path for e in entries if e.stat(follow_symlinks=False).st_uid == uid]
        except OSError:
            continue
        for path in owned:
            if os.path.isdir(path) and not os.path.islink(path):
                remove_tree(path)
            else:
                _quietly(os.unlink, path)
