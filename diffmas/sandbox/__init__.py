"""Run untrusted Python programs (generated code plus its tests) in a contained child process.

Each program runs in a fresh ``python -I -B`` interpreter (isolated mode: no PYTHON* variables, no
user site, no script directory on sys.path), with a minimal environment (HOME and TMPDIR inside
the sandbox, proxy variables empty), in a session and process group of its own. The child side
is ``harness.py``; what its private filesystem holds is ``isolation.py``. How a run is isolated
depends on what the machine allows (:func:`isolation_mode` says which applies):

``namespaces`` (the parent is root and may create namespaces: the development machines and CI)
    The child joins a memory cgroup of its own, moves into private mount, network, IPC and UTS
    namespaces, builds a filesystem from a fresh tmpfs: read-only binds of /usr (and /bin, /lib
    where they are directories) and of the interpreter's own prefixes (its venv and base
    install, wherever they are, so a pyenv build under root's 0700 home works), a private /dev
    with null, zero, full, random and urandom, private /tmp, /var/tmp, /dev/shm and work
    directory (tmpfs: they vanish with the run), and /proc; chroots into it, and drops to a
    random, otherwise unused uid/gid with no supplementary groups and no new privileges. The
    program sees nothing else of the host: no home directories, data files or project source;
    it has no network at all, cannot signal any process outside its uid, and every process it
    starts counts against one memory limit (``memory_mb``) besides each process's address
    space; reaching it is reported as an error.
``uid`` (root, but namespaces cannot be made)
    The same uid switch (after an empty network namespace where possible), on the host's
    filesystem: files that are not world-readable stay unreadable, nothing outside the work
    directory that is not world-writable can be written, but world-readable files (data sets
    included) can be read; the memory cgroup where the parent may make one. What the uid left in
    /tmp, /var/tmp and /dev/shm is removed after the run.
``guards`` (not root)
    The caller's own uid; no memory cgroup; RLIMIT_NPROC counts all the user's processes (it is
    set to the user's current count plus the budget), the parent can be signalled at the
    kernel level, and the network and writes outside the work directory are only refused by the
    Python-level guards below.

In every mode, enforced by the kernel:

- wall-clock timeout: the whole process group gets SIGKILL when it runs out, whatever signal
  handlers the program installed, and (with a uid of its own) so does every process of that uid,
  with ``kill(-1, SIGKILL)``, which catches processes that left the group with setsid;
- rlimits set in the child before the program runs, soft = hard so they cannot be raised:
  RLIMIT_CPU, RLIMIT_AS (so a memory hog gets MemoryError), RLIMIT_NPROC (a fork bomb gets
  EAGAIN), RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE = 0.

Only a Python-level guard (installed in the child before the program runs; it stops ordinary and
accidental misuse but is NOT a security boundary: ctypes, re-created C-level objects or frame
introspection get around it): open()/os.open() for writing and os.remove/rename/chmod/...,
shutil.rmtree and shutil.move outside the work directory; os.kill/os.killpg outside the
sandbox's process group, os.setsid/setpgid and ``start_new_session``; sockets other than AF_UNIX
and DNS lookups. As root in ``guards`` mode (chosen with ``isolation="guards"``) starting processes is
refused by the guard, because no process limit would apply.

The parent's cleanup cannot be turned against it: the run's directory is the parent's (0711),
the program can neither replace nor remove it, and the removal never follows a symlink, reopens
directories the program locked through their own descriptors and handles any depth.

A pass is positively confirmed: the parent sends a random nonce on stdin (never in a file, argv or
the environment); the harness reads it, points stdin at /dev/null, and writes it on a private
result pipe only after the whole program ran in the original process. ``sys.exit``, ``os._exit``,
a killed or forked process, or printed fake results are therefore never a pass. A program that
reads the nonce out of the harness's frames can still claim one: code tasks therefore never let
the program's own process judge its answers (``diffmas/tasks/code_calls.py``). stdout and stderr
are captured up to a cap each (the rest is read and discarded, so the child never blocks on a
full pipe), and what a failing program printed is flushed first. Linux only (pidfd/waitid, /proc).
"""

from diffmas.sandbox.runner import (
    ISOLATION_MODES,
    STATUSES,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    isolation_mode,
    run_program,
    run_programs,
)

__all__ = [
    "ISOLATION_MODES",
    "STATUSES",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "isolation_mode",
    "run_program",
    "run_programs",
]
