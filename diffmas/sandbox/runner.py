"""Running one program: the child process, its limits, its pipes, its verdict and its cleanup.

The guarantees are in the package's docstring (``diffmas/sandbox/__init__.py``).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from diffmas.sandbox.isolation import WORK_INSIDE, MemoryCgroup, jail_entries, remove_owned, remove_tree

STATUSES = ("pass", "fail", "timeout", "error")
ISOLATION_MODES = ("namespaces", "uid", "guards")
HARNESS = str(Path(__file__).with_name("harness.py"))
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
    max_data_bytes: int = 64 * 2**20  # kept of what the program writes to its data pipe


@dataclass
class SandboxResult:
    status: str  # one of STATUSES
    reason: str = ""
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    returncode: int | None = None
    data: str | None = None  # what the program wrote to its data pipe (``data=True``), else None

    @property
    def passed(self) -> bool:
        return self.status == "pass"


# --------------------------------------------------------------------------- public API
def run_program(
    program: str,
    limits: SandboxLimits | None = None,
    *,
    run_name: str = "__main__",
    isolation: str | None = None,
    python: str | None = None,
    requires: tuple[str, ...] = (),
    data: bool = False,
) -> SandboxResult:
    """Run ``program`` (solution and tests in one source text) and say whether it all ran.

    ``run_name`` is the program's ``__name__`` (evaluators pass something other than "__main__"
    so that ``if __name__ == "__main__":`` demo blocks are not run). ``isolation`` is one of
    :data:`ISOLATION_MODES` (default: the strongest this machine allows, :func:`isolation_mode`).
    ``python`` overrides the interpreter; ``requires`` names modules (e.g. numpy) the chosen
    interpreter must be able to import. With ``data``, the program finds a pipe's descriptor in
    its global ``__data_fd__``; what it writes there comes back in :attr:`SandboxResult.data`
    (for results too large or too structured for stdout).
    """
    limits = limits or SandboxLimits()
    mode = isolation or isolation_mode()
    if mode not in ISOLATION_MODES:
        raise SandboxError(f"isolation {mode!r}: use one of {', '.join(ISOLATION_MODES)}")
    drop = mode != "guards"
    if drop and os.geteuid() != 0:
        raise SandboxError(f"isolation {mode!r} needs root (to switch to a throw-away uid); use 'guards'")
    if python is None:
        python, jail = _interpreter(mode, tuple(requires))
    else:
        jail = mode == "namespaces"
        if jail and not _jail_works(python):
            raise SandboxError(f"isolation 'namespaces' does not work here with {python}")
    return _run(program, limits, run_name, drop, python, jail, data)


def isolation_mode() -> str:
    """The strongest isolation this machine allows: ``namespaces`` (root: a throw-away uid in a
    filesystem, network and memory cgroup of its own), ``uid`` (root where namespaces cannot be
    made: a throw-away uid on the host's filesystem) or ``guards`` (not root: the caller's uid,
    Python-level guards). The package's docstring says what each one guarantees."""
    if os.geteuid() != 0:
        return "guards"
    return "namespaces" if _jail_works(os.environ.get(PYTHON_ENV) or sys.executable) else "uid"


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
_interpreters: dict[tuple, tuple[str, bool]] = {}
_jails: dict[str, bool] = {}
_interpreter_lock = threading.Lock()


def _jail_works(python: str) -> bool:
    """Whether ``python`` runs in a filesystem of its own here (needs root and namespaces)."""
    with _interpreter_lock:
        if python not in _jails:
            probe = _run(_PROBE, SandboxLimits(timeout=20), "__main__", True, python, True)
            _jails[python] = probe.passed
            if not probe.passed:
                warnings.warn(
                    f"sandbox: no private filesystem here ({probe.reason}); programs run under a "
                    "throw-away uid on the host's filesystem (docs/evaluation.md, 'The code sandbox')",
                    stacklevel=3,
                )
        return _jails[python]


def _interpreter(mode: str, requires: tuple[str, ...] = ()) -> tuple[str, bool]:
    """The interpreter for sandboxed programs and whether it runs in a private filesystem.

    In a private filesystem the interpreter the project runs with is always usable (its prefixes
    are mounted in, wherever they are). On the host's filesystem a throw-away uid may be unable
    to read it (a pyenv build under /root); then the first other candidate that works. Failing
    loudly beats scoring every program as an error."""
    first = os.environ.get(PYTHON_ENV) or sys.executable
    if mode == "guards":
        return first, False
    key = (mode, requires)
    if key in _interpreters:
        return _interpreters[key]
    jail = mode == "namespaces"
    if jail and not _jail_works(first):
        raise SandboxError(f"isolation 'namespaces' does not work here with {first}; use 'uid'")
    candidates = [first] if jail else [first, os.path.realpath(sys.executable),
                                       getattr(sys, "_base_executable", None), "/usr/bin/python3",
                                       "/usr/local/bin/python3"]  # fmt: skip
    tried = []
    for cand in dict.fromkeys(c for c in candidates if c):
        if not (os.path.isfile(cand) and os.access(cand, os.X_OK)):
            continue
        probe_code = _PROBE + "".join(f"import {name}\n" for name in requires)
        probe = _run(probe_code, SandboxLimits(timeout=20), "__main__", True, cand, jail)
        if probe.passed:
            with _interpreter_lock:
                _interpreters[key] = (cand, jail)
            return cand, jail
        tried.append(f"{cand}: {probe.status} ({probe.reason})")
    raise SandboxError(
        f"no Python interpreter can run as an unprivileged uid with "
        f"{', '.join(requires) or 'its standard library'}; tried "
        + "; ".join(tried)
        + f". Install what is missing into {first}, or set {PYTHON_ENV} to an interpreter that has it."
    )


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


def _run(
    program: str, limits: SandboxLimits, run_name: str, drop: bool, python: str, jail: bool, data: bool = False
) -> SandboxResult:
    start = time.monotonic()
    # base (0711, the parent's) holds the program; the program can enter its work directory
    # but can neither list, replace nor remove base itself.
    base = tempfile.mkdtemp(prefix="diffmas-sandbox-")
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if drop else None
    group = MemoryCgroup.create(limits.memory_mb * 2**20) if drop else None
    proc = None
    read_fd = write_fd = data_read = data_write = -1
    try:
        os.chmod(base, 0o711)
        if jail:
            cwd = base
            os.mkdir(os.path.join(base, "root"))
        else:
            cwd = os.path.join(base, "work")
            os.mkdir(cwd)
        Path(cwd, SOLUTION_FILE).write_text(program, encoding="utf-8")
        if uid is not None and not jail:
            for path in (cwd, os.path.join(cwd, SOLUTION_FILE)):
                os.chown(path, uid, uid)
        config = {
            "rlimits": _rlimits(limits, drop),
            "uid": uid,
            "allow_fork": drop or os.geteuid() != 0,
            "run_name": run_name,
            "solution": SOLUTION_FILE,
            "cgroup": group.procs if group is not None else None,
            "jail": {"root": os.path.join(base, "root"), "work": WORK_INSIDE,
                     "entries": jail_entries(python, limits.memory_mb)} if jail else None,
        }  # fmt: skip
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": cwd,
            "TMPDIR": cwd,
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
        if data:
            data_read, data_write = os.pipe()
            config["data_fd"] = data_write
        nonce = secrets.token_hex(16)
        proc = subprocess.Popen(
            [python, "-I", "-B", HARNESS, str(write_fd), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            pass_fds=(write_fd,) + ((data_write,) if data else ()),
            start_new_session=True,
        )
        for fd in (write_fd, data_write):
            if fd >= 0:
                os.close(fd)
        write_fd = data_write = -1
        try:
            proc.stdin.write(nonce.encode() + b"\n")
            proc.stdin.close()
        except OSError:
            pass  # it died at once; the result says why
        streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", read_fd: "result"}
        caps = {"stdout": limits.max_output_bytes, "stderr": limits.max_output_bytes, "result": limits.max_output_bytes}
        if data:
            streams[data_read] = "data"
            caps["data"] = limits.max_data_bytes
        out = _Collector(streams, caps)
        timed_out = out.pump_until_exit(proc.pid, start + limits.timeout)
        _kill_all(proc.pid, uid, python)
        out.drain(time.monotonic() + _DRAIN)
        returncode = proc.wait()
        stdout, stderr = out.text("stdout"), out.text("stderr")
        status, reason = _verdict(out.text("result"), nonce, timed_out, returncode, stderr, limits)
        if group is not None and status != "pass" and _oom_killed(group):
            status, reason = "error", f"memory limit of the whole sandbox ({limits.memory_mb} MB) reached"
        seconds = round(time.monotonic() - start, 3)
        return SandboxResult(status, reason, stdout, stderr, seconds, returncode, out.text("data") if data else None)
    finally:
        if proc is not None and proc.returncode is None:
            _kill_all(proc.pid, uid, python)
            proc.wait()
        for fd in (read_fd, write_fd, data_read, data_write):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                stream.close()
        if group is not None:
            group.remove()
        remove_tree(base)
        if uid is not None and not jail:
            remove_owned(uid)


def _oom_killed(group: MemoryCgroup) -> bool:
    try:
        return group.oom_kills() > 0
    except (OSError, ValueError):
        return False


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
    """Reads the child's pipes without blocking, keeping at most its cap of bytes of each."""

    def __init__(self, streams: dict[int, str], caps: dict[str, int]):
        self.names = streams
        self.caps = caps
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
        room = self.caps[name] - len(self.data[name])
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
