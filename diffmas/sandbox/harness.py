"""Child side of :mod:`diffmas.sandbox`: runs as ``python -I -B harness.py FD CONFIG``.

Runs in a fresh interpreter, never imported by the package. In order, it: reads the pass nonce from
stdin (then points stdin at /dev/null) and the program, (as root) joins the run's memory cgroup,
sets the resource limits, moves into private mount, network, IPC and UTS namespaces with a
filesystem of its own (``jail`` in the config; see ``isolation.py``) and drops to the throw-away
uid, installs the Python-level guards, runs ``solution.py`` and reports ``pass NONCE`` / ``fail
REASON`` / ``error REASON`` on the result pipe FD. Only the original process reports, and only
after the whole program ran, so ``sys.exit``, ``os._exit`` or a forked child cannot claim a pass.
Kept to the standard library and to syntax that older system interpreters accept, because it may
run under /usr/bin/python3.
"""

import errno
import json
import os
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
MAX_REASON = 400


def _read_nonce():
    data = b""
    while not data.endswith(b"\n") and len(data) < 256:
        chunk = os.read(0, 256)
        if not chunk:
            break
        data += chunk
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the program sees an empty stdin, never the nonce
    os.close(devnull)
    sys.stdin = open(os.devnull)
    return data.decode().strip()


def _setup(cfg, program):
    """Limits, namespaces and uid, in that order (the cgroup and the mounts need root); returns
    the work directory, where ``program`` now is."""
    import resource

    if cfg.get("cgroup"):
        with open(cfg["cgroup"], "w") as f:  # this process and all it starts count against one limit
            f.write(str(os.getpid()))
    for name, value in cfg["rlimits"]:
        # hard = soft, so the program cannot raise them; CPU gets one second more so that SIGXCPU
        # (reported as a CPU timeout) comes before the hard limit's SIGKILL.
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))
    uid = cfg.get("uid")
    work = os.path.realpath(os.getcwd())
    if cfg.get("jail"):
        work = _enter_jail(cfg["jail"], uid, cfg["solution"], program)
    elif uid is not None:
        try:  # best effort: an empty network namespace has no interfaces, not even a working loopback
            _libc().unshare(CLONE_NEWNET)
        except Exception:  # noqa: BLE001 - the Python socket guard still applies
            pass
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # after this the rlimits bind (RLIMIT_NPROC is ignored for root) and root files are read-only
    return work


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(rc, what):
    if rc != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, "jail: " + what + ": " + os.strerror(err))


def _mount(libc, source, target, fstype, flags, data=None):
    import ctypes

    def enc(v):
        return v.encode() if v else None

    rc = libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(rc, "mount " + str(source or fstype) + " on " + target)


def _enter_jail(jail, uid, solution, program):
    """Private namespaces and a filesystem made of ``jail["entries"]`` under a fresh tmpfs root,
    then chroot into it, with the text ``program`` written to ``solution`` in its (tmpfs) work
    directory. The program (a non-root uid with no capabilities once this returns) cannot leave
    the chroot, see the host's files or reach any network. Returns the work dir."""
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    root = jail["root"]
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for kind, source, target, options in jail["entries"]:
        path = root + target
        if kind == "symlink":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(source, path)
            continue
        if kind in ("ro", "dev") and not os.path.isdir(source):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        else:
            os.makedirs(path, exist_ok=True)
        if kind in ("ro", "dev"):
            _mount(libc, source, path, None, MS_BIND | MS_REC)
            flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (MS_RDONLY if kind == "ro" else 0)
            _mount(libc, None, path, None, flags | (MS_NODEV if kind == "ro" else 0))
        elif kind == "tmpfs":
            _mount(libc, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, options)
        elif kind == "proc":
            try:  # other users' processes hidden where the kernel allows it per mount
                _mount(libc, "proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
            except OSError:
                _mount(libc, "proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    work = root + jail["work"]
    if uid is not None:
        os.chown(work, uid, uid)
    _mount(libc, None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755")
    os.chroot(root)
    os.chdir(jail["work"])
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid program can give the uid back
    os.environ.update(HOME=jail["work"], TMPDIR=jail["work"])
    with open(solution, "w", encoding="utf-8") as f:
        f.write(program)
    if uid is not None:
        os.chown(solution, uid, uid)
    return jail["work"]


def _install_guards(work, allow_fork):
    """Refuse the common ways out; plain Python, so ctypes or reloaded C modules get around it."""
    _guard_filesystem(work)
    _guard_processes(allow_fork)
    _guard_network()


def _deny(what, target=None):
    raise PermissionError(errno.EACCES, "sandbox: " + what + " is not allowed", target)


def _patch(name, func):
    import posix

    for mod in (os, posix):  # posix too: importlib.reload(os) re-exports posix's functions
        if hasattr(mod, name):
            setattr(mod, name, func)


def _guard_filesystem(work):
    """Writes, removals, renames and links only inside ``work`` (the resolved work directory)."""
    import builtins
    import io
    import shutil

    real_path, readlink = os.path.realpath, os.readlink

    def resolve(path, dir_fd=None):
        if isinstance(path, int):
            path = readlink(f"/proc/self/fd/{path}")
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(readlink(f"/proc/self/fd/{dir_fd}"), path)
        return real_path(path)

    def inside(path, dir_fd=None):
        try:
            p = resolve(path, dir_fd)
        except (OSError, TypeError, ValueError):
            return False
        return p == work or p.startswith(work + os.sep) or p == os.devnull

    def path_guard(name, *checked):
        """Check the given (argument position, dir_fd keyword) pairs before calling os.<name>."""
        original = getattr(os, name, None)
        if original is None:
            return

        def guarded(*args, **kwargs):
            for i, fd_key in checked:
                if i < len(args) and not inside(args[i], kwargs.get(fd_key)):
                    _deny(name + " outside the work directory", str(args[i]))
            for key in ("path", "src", "dst"):  # the same arguments given by keyword
                if key in kwargs and not inside(kwargs[key], kwargs.get("dir_fd")):
                    _deny(name + " outside the work directory", str(kwargs[key]))
            return original(*args, **kwargs)

        _patch(name, guarded)

    for name in (
        "remove",
        "unlink",
        "rmdir",
        "mkdir",
        "chmod",
        "chown",
        "lchown",
        "truncate",
        "utime",
        "mkfifo",
        "mknod",
        "setxattr",
        "removexattr",
    ):
        path_guard(name, (0, "dir_fd"))
    for name in ("rename", "replace"):
        path_guard(name, (0, "src_dir_fd"), (1, "dst_dir_fd"))
    path_guard("link", (1, "dst_dir_fd"))
    path_guard("symlink", (1, "dir_fd"))

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_os_open, real_open = os.open, builtins.open

    def os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags and not inside(path, dir_fd):
            _deny("writing outside the work directory", str(path))
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def open_(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in str(mode) for c in "wax+") and not inside(file):
            _deny("writing outside the work directory", str(file))
        return real_open(file, mode, *args, **kwargs)

    _patch("open", os_open)
    builtins.open = io.open = open_

    real_rmtree, real_move = shutil.rmtree, shutil.move

    def rmtree(path, *args, **kwargs):
        if not inside(path):
            _deny("shutil.rmtree outside the work directory", str(path))
        return real_rmtree(path, *args, **kwargs)

    def move(src, dst, *args, **kwargs):
        if not (inside(src) and inside(dst)):
            _deny("shutil.move outside the work directory", str(src))
        return real_move(src, dst, *args, **kwargs)

    shutil.rmtree, shutil.move = rmtree, move


def _guard_processes(allow_fork):
    """Signals only to the sandbox's own process group, which nothing may leave; no new processes
    at all where ``allow_fork`` is false."""
    import subprocess

    own_pid, getpgid = os.getpid, os.getpgid
    real_kill, real_killpg = os.kill, os.killpg
    group = getpgid(0)

    def kill(pid, sig):
        if pid == 0 or pid == own_pid() or pid == -group:
            return real_kill(pid, sig)
        if pid > 0:
            try:
                if getpgid(pid) == group:
                    return real_kill(pid, sig)
            except OSError:
                pass
        _deny("signalling a process outside the sandbox", str(pid))

    def killpg(pgid, sig):
        if pgid not in (0, group):
            _deny("signalling a process group outside the sandbox", str(pgid))
        return real_killpg(pgid, sig)

    _patch("kill", kill)
    _patch("killpg", killpg)

    def no_new_session(*args, **kwargs):  # leaving the group would dodge the group kill
        _deny("leaving the sandbox's process group")

    for name in ("setsid", "setpgid", "setpgrp"):
        _patch(name, no_new_session)
    real_popen_init = subprocess.Popen.__init__

    def popen_init(self, *args, **kwargs):
        kwargs["start_new_session"] = False
        kwargs.pop("process_group", None)
        return real_popen_init(self, *args, **kwargs)

    subprocess.Popen.__init__ = popen_init
    if not allow_fork:  # root without a uid of its own: the kernel would not count processes

        def no_fork(*args, **kwargs):
            _deny("starting processes (no process limit is enforced for root)")

        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve"):
            _patch(name, no_fork)
        subprocess.Popen.__init__ = no_fork


def _guard_network():
    """Only AF_UNIX sockets (local pipes, as asyncio uses) can be made."""
    import _socket
    import socket

    real_socket = socket.socket

    class GuardedSocket(real_socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if family != socket.AF_UNIX:
                _deny("network access")
            real_socket.__init__(self, family, type, proto, fileno)

    def no_network(*args, **kwargs):
        _deny("network access")

    socket.socket = socket.SocketType = GuardedSocket
    for name in (
        "create_connection",
        "create_server",
        "getaddrinfo",
        "gethostbyname",
        "gethostbyname_ex",
        "gethostbyaddr",
        "fromfd",
    ):
        setattr(socket, name, no_network)
    _socket.socket = GuardedSocket


def _where(exc, filename):
    """`` (line N: source)`` for the last frame of the program in ``exc``'s traceback."""
    import linecache
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    if not frames:
        return ""
    frame = frames[-1]
    line = (frame.line or linecache.getline(filename, frame.lineno) or "").strip()
    return f" (line {frame.lineno}: {line})" if line else f" (line {frame.lineno})"


def _classify(exc, filename):
    if isinstance(exc, SystemExit):
        return "fail", f"program called sys.exit({exc.code!r}) before the tests finished"
    detail = str(exc)
    name = type(exc).__name__ + (": " + detail if detail else "")
    if isinstance(exc, AssertionError):
        return "fail", name + _where(exc, filename)
    if isinstance(exc, MemoryError):
        return "error", "memory limit (MemoryError)" + _where(exc, filename)
    if isinstance(exc, BlockingIOError) and exc.errno == errno.EAGAIN:
        name += " [process limit?]"
    return "error", name + _where(exc, filename)


def _flush():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - the program may have replaced or closed them
            pass


def main():
    write, exit_, getpid = os.write, os._exit, os.getpid
    result_fd, cfg = int(sys.argv[1]), json.loads(sys.argv[2])
    origin = getpid()

    def report(status, text):
        _flush()  # what the program printed before it failed is kept
        if getpid() == origin:  # a forked child never speaks for the sandbox
            try:
                write(result_fd, (status + " " + text.replace("\n", " ")[:MAX_REASON] + "\n").encode())
            except OSError:
                pass
        exit_(0 if status == "pass" else 1)

    try:
        nonce = _read_nonce()
        with open(cfg["solution"], encoding="utf-8") as f:
            source = f.read()
        work = _setup(cfg, source)
        filename = os.path.join(work, cfg["solution"])
    except Exception as exc:  # noqa: BLE001
        report("error", f"sandbox setup failed: {type(exc).__name__}: {exc}")
    try:
        code = compile(source, filename, "exec")
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        report(
            "error", "{}: {}{}".format(type(exc).__name__, getattr(exc, "msg", exc), f" (line {line})" if line else "")
        )
    try:
        _install_guards(work, cfg.get("allow_fork", True))
    except Exception as exc:  # noqa: BLE001
        report("error", f"sandbox setup failed: {type(exc).__name__}: {exc}")
    namespace = {"__name__": cfg.get("run_name", "__main__"), "__file__": filename, "__builtins__": __builtins__}
    if cfg.get("data_fd") is not None:
        namespace["__data_fd__"] = cfg["data_fd"]
    try:
        exec(code, namespace)
    except BaseException as exc:  # noqa: BLE001 - every way out of the program is a result
        report(*_classify(exc, filename))
    report("pass", nonce)  # exits at once: threads that never finish do not hold the result


if __name__ == "__main__":
    main()
