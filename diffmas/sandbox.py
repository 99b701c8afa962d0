"""Run untrusted Python programs (generated code plus its tests) in a contained child process.

Each program runs in a fresh ``python -I -B`` interpreter (isolated mode: no PYTHON* variables, no
user site, no script directory on sys.path), in a throw-away working directory that is removed
afterwards, with a minimal environment (HOME and TMPDIR point into the work directory, proxy
variables are empty) and in a session and process group of its own. The child side lives in
``_sandbox_harness.py``.

What is enforced by the kernel (the hard limits):

- wall-clock timeout: the whole process group gets SIGKILL when it runs out, whatever signal
  handlers the program installed, and so does every process of the sandbox's uid (below);
- rlimits set in the child before the program runs, soft = hard so they cannot be raised:
  RLIMIT_CPU (CPU seconds), RLIMIT_AS (address space, so a memory hog gets MemoryError),
  RLIMIT_NPROC (processes and threads: a fork bomb gets EAGAIN), RLIMIT_FSIZE (largest file),
  RLIMIT_NOFILE, RLIMIT_CORE = 0;
- when the parent runs as root (as on the development machines), the child drops to a random,
  otherwise unused uid/gid with no supplementary groups, after moving into an empty network
  namespace. Then RLIMIT_NPROC really binds (the kernel ignores it for root), files outside the
  work directory that are not world-writable cannot be written, no other user's process
  (the parent included) can be signalled, there is no network at all, and after the run every
  process of that uid is killed with ``kill(-1, SIGKILL)``, which catches processes that left
  the process group with setsid.

What is only a Python-level guard (installed in the child before the program runs; it stops
ordinary and accidental misuse but it is NOT a security boundary against a determined attacker,
who can use ctypes, re-created C-level objects or frame introspection to get around it):

- open()/os.open() for writing, os.remove/unlink/rename/replace/rmdir/mkdir/chmod/..., shutil.rmtree
  and shutil.move outside the work directory (symlink races are not prevented);
- os.kill/os.killpg of anything outside the sandbox's process group, os.setsid/setpgid and
  ``start_new_session`` in subprocess;
- socket creation for anything but AF_UNIX, and DNS lookups;
- without root, RLIMIT_NPROC counts all of the user's processes, so it is set to the user's
  current count plus the budget, the parent can be signalled at the kernel level, the network is
  only blocked by the guard, and world-writable places (/tmp, /dev/shm) stay writable by the
  kernel's rules; as root without a uid of its own (``isolate_user=False``) starting processes is
  refused by the guard instead, because no process limit would apply.

A pass is positively confirmed: the parent sends a random nonce on stdin (never in a file, argv or
the environment); the harness reads it, points stdin at /dev/null, and writes it on a private
result pipe only after the whole program ran in the original process. ``sys.exit``, ``os._exit``,
a killed or forked process, or printed fake results are therefore never a pass. stdout and stderr
are captured up to a cap each (the rest is read and discarded, so the child never blocks on a
full pipe). Linux only (pidfd/waitid, /proc).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("pass", "fail", "timeout", "error")
HARNESS = str(Path(__file__).with_name("_sandbox_harness.py"))
PYTHON_ENV = "DIFFMAS_SANDBOX_PYTHON"  # force the interpreter the sandbox runs programs with
SOLUTION_FILE = "solution.py"
_UID_BASE, _UID_SPAN = 1_000_000_000, 1_000_000_000  # far above any real account's uid
_EXIT_GRACE = 0.25  # after the program exits: how long to keep reading what its children still write
_DRAIN = 1.0  # after the kill: how long to wait for the pipes to close


class SandboxError(RuntimeError):
    """The sandbox itself cannot run (e.g. no interpreter usable by an unprivileged uid)."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 5.0  # wall-clock seconds
    cpu_seconds: float | None = None  # None: the timeout plus one second
    memory_mb: int = 1024  # address space
    max_processes: int = 32  # processes and threads of the sandbox
    max_file_mb: int = 16  # largest file the program may write
    max_open_files: int = 256
    max_output_bytes: int = 64 * 1024  # kept per stream (stdout, stderr)


@dataclass
class SandboxResult:
    status: str  # one of STATUSES
    reason: str = ""
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    returncode: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"


# --------------------------------------------------------------------------- public API
def run_program(
    program: str,
    limits: SandboxLimits | None = None,
    *,
    run_name: str = "__main__",
    isolate_user: bool | None = None,
    python: str | None = None,
    requires: tuple[str, ...] = (),
) -> SandboxResult:
    """Run ``program`` (solution and tests in one source text) and say whether it all ran.

    ``run_name`` is the program's ``__name__`` (evaluators pass something other than "__main__"
    so that ``if __name__ == "__main__":`` demo blocks are not run). ``isolate_user`` (default: when
    running as root) drops the child to a throw-away uid. ``python`` overrides the interpreter;
    ``requires`` names modules (e.g. numpy) the chosen interpreter must be able to import.
    """
    limits = limits or SandboxLimits()
    drop = os.geteuid() == 0 if isolate_user is None else bool(isolate_user)
    if drop and os.geteuid() != 0:
        raise SandboxError("isolate_user=True needs root (to switch to a throw-away uid)")
    interpreter = python or _interpreter(drop, tuple(requires))
    return _run(program, limits, run_name, drop, interpreter)


def run_programs(
    programs: list[str], limits: SandboxLimits | None = None, *, workers: int = 2, **kwargs
) -> list[SandboxResult]:
    """Run several programs, ``workers`` at a time, results in input order.

    Threads suffice (each one only waits on its child), and every run has its own directory, pipes
    and uid, so concurrent runs cannot see each other.
    """
    if not programs:
        return []
    workers = max(1, min(workers, len(programs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda p: run_program(p, limits, **kwargs), programs))


# --------------------------------------------------------------------------- interpreter
_PROBE = "import collections, functools, heapq, itertools, json, math, re, string, typing\n"
_interpreters: dict[tuple, str] = {}
_interpreter_lock = threading.Lock()


def _interpreter(drop: bool, requires: tuple[str, ...] = ()) -> str:
    """The interpreter for sandboxed programs: the current one unless its standard library (or a
    required module) is unreadable by an unprivileged uid (e.g. a pyenv build under /root); then
    the first other candidate that works. Failing loudly beats scoring every program as an error."""
    if not drop:
        return os.environ.get(PYTHON_ENV) or sys.executable
    key = (drop, requires)
    with _interpreter_lock:
        if key not in _interpreters:
            candidates = [
                os.environ.get(PYTHON_ENV),
                sys.executable,
                os.path.realpath(sys.executable),
                getattr(sys, "_base_executable", None),
                "/usr/bin/python3",
                "/usr/local/bin/python3",
            ]
            tried = []
            for cand in dict.fromkeys(c for c in candidates if c):
                if not (os.path.isfile(cand) and os.access(cand, os.X_OK)):
                    continue
                probe_code = _PROBE + "".join(f"import {name}\n" for name in requires)
                probe = _run(probe_code, SandboxLimits(timeout=20), "__main__", True, cand)
                if probe.passed:
                    _interpreters[key] = cand
                    break
                tried.append(f"{cand}: {probe.status} ({probe.reason})")
            else:
                raise SandboxError(
                    f"no Python interpreter can run as an unprivileged uid with "
                    f"{', '.join(requires) or 'its standard library'}; tried "
                    + "; ".join(tried)
                    + f". Set {PYTHON_ENV} to one that can."
                )
        return _interpreters[key]


# --------------------------------------------------------------------------- one run
def _rlimits(limits: SandboxLimits, drop: bool) -> list[tuple[str, int]]:
    cpu = math.ceil(limits.cpu_seconds if limits.cpu_seconds is not None else limits.timeout + 1)
    nproc = limits.max_processes if drop else _tasks_of_uid(os.getuid()) + limits.max_processes
    return [
        ("RLIMIT_CPU", max(1, cpu)),
        ("RLIMIT_AS", limits.memory_mb * 2**20),
        ("RLIMIT_NPROC", nproc),
        ("RLIMIT_FSIZE", limits.max_file_mb * 2**20),
        ("RLIMIT_NOFILE", limits.max_open_files),
        ("RLIMIT_CORE", 0),
    ]


def _tasks_of_uid(uid: int) -> int:
    """Threads of all processes whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue  # it exited meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total


def _run(program: str, limits: SandboxLimits, run_name: str, drop: bool, python: str) -> SandboxResult:
    start = time.monotonic()
    work = tempfile.mkdtemp(prefix="diffmas-sandbox-")
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if drop else None
    proc = None
    read_fd = write_fd = -1
    try:
        Path(work, SOLUTION_FILE).write_text(program, encoding="utf-8")
        if uid is not None:
            for path in (work, os.path.join(work, SOLUTION_FILE)):
                os.chown(path, uid, uid)
        config = {
            "rlimits": _rlimits(limits, drop),
            "uid": uid,
            "allow_fork": drop or os.geteuid() != 0,
            "run_name": run_name,
            "solution": SOLUTION_FILE,
        }
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": work,
            "TMPDIR": work,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "http_proxy": "",
            "https_proxy": "",
            "HTTP_PROXY": "",
            "HTTPS_PROXY": "",
            "all_proxy": "",
            "no_proxy": "*",
        }
        read_fd, write_fd = os.pipe()
        nonce = secrets.token_hex(16)
        proc = subprocess.Popen(
            [python, "-I", "-B", HARNESS, str(write_fd), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=work,
            env=env,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
        os.close(write_fd)
        write_fd = -1
        try:
            proc.stdin.write(nonce.encode() + b"\n")
            proc.stdin.close()
        except OSError:
            pass  # it died at once; the result says why
        streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", read_fd: "result"}
        out = _Collector(streams, limits.max_output_bytes)
        timed_out = out.pump_until_exit(proc.pid, start + limits.timeout)
        _kill_all(proc.pid, uid, python)
        out.drain(time.monotonic() + _DRAIN)
        returncode = proc.wait()
        stdout, stderr = out.text("stdout"), out.text("stderr")
        status, reason = _verdict(out.text("result"), nonce, timed_out, returncode, stderr, limits)
        return SandboxResult(status, reason, stdout, stderr, round(time.monotonic() - start, 3), returncode)
    finally:
        if proc is not None and proc.returncode is None:
            _kill_all(proc.pid, uid, python)
            proc.wait()
        for fd in (read_fd, write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                stream.close()
        _remove_tree(work)


def _verdict(
    report: str, nonce: str, timed_out: bool, returncode: int, stderr: str, limits: SandboxLimits
) -> tuple[str, str]:
    lines = [line.split(" ", 1) + [""] for line in report.splitlines() if line.strip()]
    if any(parts[0] == "pass" and parts[1] == nonce for parts in lines):
        return "pass", "all tests ran"
    if timed_out:
        return "timeout", f"killed after {limits.timeout:.1f} s (wall clock)"
    claims = [parts for parts in lines if parts[0] in ("fail", "error")]
    if claims:
        return claims[-1][0], claims[-1][1]
    if any(parts[0] == "pass" for parts in lines):
        return "fail", "forged pass report (wrong nonce)"
    if returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        if sig == signal.SIGXCPU:
            return "timeout", f"CPU time limit ({name})"
        if sig == signal.SIGKILL:
            return "error", "killed by SIGKILL (CPU time hard limit or out of memory)"
        return "error", f"killed by {name}"
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if returncode == 0:
        return "fail", "exited before the tests finished (exit code 0, no confirmation)"
    return "error", f"exited with code {returncode} before the tests finished" + (f": {last}" if last else "")


class _Collector:
    """Reads the child's pipes without blocking, keeping at most ``cap`` bytes of each."""

    def __init__(self, streams: dict[int, str], cap: int):
        self.names = streams
        self.cap = cap
        self.data = {name: bytearray() for name in streams.values()}
        self.dropped = dict.fromkeys(streams.values(), 0)
        self.sel = selectors.DefaultSelector()
        for fd in streams:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ)
        self.open = set(streams)

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.sel.unregister(fd)
            self.open.discard(fd)
            return
        name = self.names[fd]
        room = self.cap - len(self.data[name])
        self.data[name] += chunk[: max(room, 0)]
        self.dropped[name] += max(len(chunk) - max(room, 0), 0)

    def pump_until_exit(self, pid: int, deadline: float) -> bool:
        """Read until the child exits (then a short grace) or the deadline; True on timeout."""
        pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
                self.sel.register(pidfd, selectors.EVENT_READ)
            except OSError:
                pidfd = None
        try:
            grace_end = None
            while True:
                now = time.monotonic()
                if grace_end is None and now >= deadline:
                    return True
                if grace_end is not None and (now >= grace_end or not self.open):
                    return False
                wait = (grace_end or deadline) - now
                for key, _ in self.sel.select(wait if pidfd is not None else min(wait, 0.02)):
                    if key.fd != pidfd:
                        self._read(key.fd)
                if grace_end is None and _has_exited(pid):
                    grace_end = time.monotonic() + _EXIT_GRACE
                    if pidfd is not None:
                        self.sel.unregister(pidfd)
                        os.close(pidfd)
                        pidfd = None
        finally:
            if pidfd is not None:
                self.sel.unregister(pidfd)
                os.close(pidfd)

    def drain(self, deadline: float) -> None:
        while self.open and time.monotonic() < deadline:
            for key, _ in self.sel.select(max(deadline - time.monotonic(), 0)):
                self._read(key.fd)
        self.sel.close()

    def text(self, name: str) -> str:
        text = self.data[name].decode("utf-8", errors="replace")
        if self.dropped[name]:
            text += f"\n[... {self.dropped[name]} more bytes not kept]"
        return text


def _has_exited(pid: int) -> bool:
    # WNOWAIT leaves the zombie in place: its pid (= the group id) cannot be reused before the kill.
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_all(pid: int, uid: int | None, python: str) -> None:
    """SIGKILL the child's process group, then (with a uid of its own) every process of that uid."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in the group
    if uid is None:
        return
    # kill(-1) from a process of that uid reaches all its other processes at once, also those that
    # left the group; a sandboxed process could kill the reaper first, so try again (their CPU
    # limit ends them anyway).
    # The reaper starts as root and switches uid itself, so the interpreter need not be usable by
    # that uid.
    code = (
        f"import os\nos.setgroups([])\nos.setgid({uid})\nos.setuid({uid})\n"
        "try:\n os.kill(-1, 9)\nexcept OSError:\n pass\n"
    )
    for _ in range(3):
        reaper = subprocess.run(
            [python, "-I", "-S", "-B", "-c", code],
            env={},
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
        if reaper.returncode == 0:
            return


def _remove_tree(path: str) -> None:
    def retry(func, failed, _exc):
        # The program may have removed permissions from its own files (chmod 000 directories).
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            os.chmod(failed, 0o700)
            func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)
