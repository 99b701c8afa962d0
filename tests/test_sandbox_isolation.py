"""The sandbox's isolation modes against programs that attack the parent's cleanup, its memory
limit and its filesystem (diffmas/sandbox/__init__.py says what each mode guarantees).

As root (CI and the development machines) every mode is tested; otherwise only ``guards``.
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from diffmas.sandbox import SandboxLimits, isolation_mode, run_program
from diffmas.sandbox.isolation import MemoryCgroup, remove_tree

ROOT = os.geteuid() == 0
MODES = (["namespaces", "uid"] if ROOT else []) + ["guards"]
LIMITS = SandboxLimits(timeout=10.0, memory_mb=512, max_processes=16)
root_only = pytest.mark.skipif(not ROOT, reason="the uid switch needs root")


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("diffmas-sandbox-*")}


@pytest.fixture
def victim(tmp_path):
    """A file and a directory outside the sandbox whose permissions must not change."""
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    target.chmod(0o600)
    return target


def _modes_of(path: Path) -> tuple[int, int, int]:
    tmp = os.stat(tempfile.gettempdir()).st_mode
    return stat.S_IMODE(tmp), stat.S_IMODE(path.stat().st_mode), stat.S_IMODE(path.parent.stat().st_mode)


@pytest.mark.skipif(not ROOT, reason="as root: the case of a machine like ours")
def test_root_runs_the_project_interpreter_with_its_libraries():
    # A venv made from a pyenv build under root's 0700 home: a throw-away uid cannot read it on
    # the host's filesystem, so the sandbox must bring it in (or find another with numpy).
    result = run_program("import sys, numpy\nprint(sys.executable)\n", LIMITS, requires=("numpy",))
    assert result.passed, result
    if isolation_mode() == "namespaces":
        assert result.stdout.strip() == (os.environ.get("DIFFMAS_SANDBOX_PYTHON") or sys.executable)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attack", ["remove", "symlink-file", "symlink-tmp"])
def test_cleanup_never_changes_permissions_outside(mode, attack, victim):
    before, leftovers = _modes_of(victim), _leftovers()
    target = {"symlink-file": str(victim), "symlink-tmp": tempfile.gettempdir(), "remove": ""}[attack]
    program = (
        "import os, shutil\n"
        "work = os.getcwd()\n"
        "os.chdir('/')\n"
        "for name in os.listdir(work):\n"
        "    os.unlink(os.path.join(work, name))\n"
        "try:\n"
        "    os.rmdir(work)\n"
        f"    if {target!r}:\n"
        f"        os.symlink({target!r}, work)\n"
        "except OSError:\n"
        "    pass\n"
    )
    if mode == "guards":  # the guard refuses unlink outside; use the C-level calls through posix
        program = "import posix as os_\n" + program.replace("os.unlink", "os_.unlink").replace("os.rmdir", "os_.rmdir")
        program = program.replace("os.symlink", "os_.symlink")
    run_program(program, LIMITS, isolation=mode)
    assert _modes_of(victim) == before
    assert victim.read_text() == "precious"
    assert _leftovers() <= leftovers
    again = run_program("print('still fine')\n", LIMITS, isolation=mode)
    assert again.passed and again.stdout == "still fine\n"


@pytest.mark.parametrize("mode", MODES)
def test_a_very_deep_tree_is_removed(mode):
    leftovers = _leftovers()
    program = (
        "import os\n"
        "for _ in range(1500):\n"
        "    os.mkdir('d')\n"
        "    os.chdir('d')\n"
        "open('bottom.txt', 'w').write('x')\n"
        "os.chmod('.', 0o500)\n"
    )
    result = run_program(program, LIMITS, isolation=mode)
    assert result.passed, result
    assert _leftovers() <= leftovers


def test_remove_tree_handles_symlinks_locked_and_deep_directories(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f.txt").write_text("f")
    (tree / "link").symlink_to(outside)
    (tree / "a" / "link").symlink_to(outside / "keep.txt")
    deep = tree / "deep"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY)
    for _ in range(1200):  # deeper than recursion and than PATH_MAX allow
        os.mkdir("dddd", dir_fd=fd)
        child = os.open("dddd", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    (tree / "locked" / "inner").mkdir(parents=True)
    (tree / "locked" / "inner").chmod(0)
    (tree / "locked").chmod(0o500)
    remove_tree(str(tree))
    assert not tree.exists()
    assert (outside / "keep.txt").read_text() == "keep"
    link = tmp_path / "link-only"
    link.symlink_to(outside)
    remove_tree(str(link))
    assert not link.exists() and (outside / "keep.txt").exists()


@root_only
def test_memory_is_limited_for_the_whole_process_tree():
    if isolation_mode() != "namespaces" or MemoryCgroup.create(2**20) is None:
        pytest.skip("no memory cgroup can be made here")
    # Four children of 200 MB each: every one is under the per-process limit (512 MB), all of
    # them together are not.
    program = (
        "import os, time\n"
        "kids = []\n"
        "for _ in range(4):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = b'x' * (200 * 2**20)\n"
        "        time.sleep(2)\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "codes = [os.waitpid(pid, 0)[1] for pid in kids]\n"
        "assert codes == [0, 0, 0, 0], codes\n"
    )
    result = run_program(program, LIMITS)
    assert result.status == "error" and "memory limit of the whole sandbox" in result.reason, result
    one = run_program("block = b'x' * (200 * 2**20)\n", LIMITS)
    assert one.passed, one


@pytest.mark.parametrize("mode", [m for m in MODES if m != "guards"])
def test_files_in_shared_temporary_places_do_not_outlive_the_run(mode):
    name = f"diffmas-test-{secrets.token_hex(6)}"
    places = [p for p in ("/dev/shm", "/var/tmp", "/tmp") if os.path.isdir(p)]
    # Through libc, as a determined program would: the Python guard refuses these writes.
    program = "import ctypes, os\nlibc = ctypes.CDLL(None)\n" + "".join(
        f"assert libc.open({os.path.join(p, name).encode()!r}, os.O_WRONLY | os.O_CREAT, 0o644) >= 0\n" for p in places
    )
    result = run_program(program, LIMITS, isolation=mode)
    assert result.passed, result
    assert not [p for p in places if os.path.exists(os.path.join(p, name))]


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_program_keeps_what_it_printed(mode):
    result = run_program("print('partial output')\nassert 1 == 2, 'wrong'\n", LIMITS, isolation=mode)
    assert result.status == "fail" and result.stdout == "partial output\n", result


@pytest.mark.skipif(not ROOT or isolation_mode() != "namespaces", reason="a private filesystem needs root")
def test_the_program_sees_only_its_interpreter_and_work_directory(tmp_path):
    secret = Path(__file__).resolve()  # the project's source, and any data file, stay invisible
    host_file = Path(tempfile.gettempdir()) / f"diffmas-host-{secrets.token_hex(4)}"
    host_file.write_text("the host's /tmp")
    program = (
        "import os, sys\n"
        f"assert not os.path.exists({str(secret)!r})\n"
        f"assert not os.path.exists({str(tmp_path)!r})\n"
        "assert os.getcwd() == '/sandbox'\n"
        f"assert not os.path.exists({str(host_file)!r})\n"
        "try:\n"
        "    open('/usr/diffmas-probe', 'w')\n"
        "except OSError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('wrote into /usr')\n"
    )
    try:
        result = run_program(program, LIMITS)
    finally:
        host_file.unlink()
    assert result.passed, result


def test_unknown_isolation_mode_is_refused():
    from diffmas.sandbox import SandboxError

    with pytest.raises(SandboxError, match="use one of namespaces, uid, guards"):
        run_program("pass\n", LIMITS, isolation="docker")
