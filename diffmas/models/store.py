"""The on-disk cache of de-quantised models.

De-quantising a GGUF takes about a minute, loading the saved safetensors a few seconds, so each
registry model is de-quantised once into ``<cache>/<name>/``. Entries are built in a private
temporary directory and renamed into place only when complete, with a marker file written last,
so an interrupted run (Ctrl-C, out of memory, full disk) never leaves something that looks cached.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

CACHE_ENV = "DIFFMAS_CACHE_DIR"
MARKER = "diffmas-cache.json"  # written last: its presence means the entry is complete
_PARTIAL_PREFIX = ".partial-"


def default_cache_dir() -> Path:
    """``$DIFFMAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/diffmas/models``, else ``~/.cache/...``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "diffmas" / "models"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def entry_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the de-quantised ``name`` lives (whether or not it is there yet)."""
    return resolve_cache_dir(cache_dir) / name


def is_cached(name: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """True only for a complete entry: a half-written or foreign directory does not count."""
    return (entry_dir(name, cache_dir) / MARKER).is_file()


def read_marker(name: str, cache_dir: str | os.PathLike | None = None) -> dict:
    return json.loads((entry_dir(name, cache_dir) / MARKER).read_text())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_partials(name: str, cache_dir: str | os.PathLike | None = None) -> None:
    """Remove temporary build directories of ``name`` left by processes that have died.

    Directories of live processes are kept: another process may be building the same model.
    """
    root = resolve_cache_dir(cache_dir)
    if not root.is_dir():
        return
    for path in root.glob(f"{_PARTIAL_PREFIX}{name}-*"):
        try:
            pid = int(path.name[len(_PARTIAL_PREFIX) + len(name) + 1 :].split("-")[0])
        except ValueError:
            pid = -1
        if pid < 0 or not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def new_partial_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A fresh private directory inside the cache (same file system: the final rename is atomic)."""
    root = resolve_cache_dir(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{_PARTIAL_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def commit_partial(partial: Path, name: str, info: dict, cache_dir=None) -> Path:
    """Write the marker into ``partial`` and move it into place as the entry for ``name``.

    If another process finished the same entry first, its entry is kept and ours discarded.
    """
    (partial / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True))
    final = entry_dir(name, cache_dir)
    if final.exists() and not is_cached(name, cache_dir):
        shutil.rmtree(final)  # an incomplete leftover (no marker): never trusted
    try:
        os.replace(partial, final)
    except OSError:
        if not is_cached(name, cache_dir):
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return final
