"""Reading benchmark rows from local files, a data directory, or the Hugging Face hub.

Every reader yields :class:`RawRow` records instead of raising on a bad row, so that one malformed
line never aborts a load: the task decides what to skip and the caller sees how many were skipped.
Only problems with the file as a whole (missing, empty, binary, not JSON at all) raise DataError.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffmas.errors import DataError

DATA_DIR_ENV = "DIFFMAS_DATA_DIR"
OFFLINE_HINT = (
    "pass --data-path FILE (a local copy of the split) or set DIFFMAS_DATA_DIR to a directory laid "
    "out like the shared benchmark folder (e.g. DIFFMAS_DATA_DIR=../shared/data)"
)
# JSON object keys under which a single-document file may keep its list of records
# (BIG-bench task.json uses "examples").
_LIST_KEYS = ("examples", "data", "rows", "records")


@dataclass
class RawRow:
    """One record as read, before the task interprets it.

    ``index`` is the 0-based position in the source (a line index for jsonl, counting bad lines too,
    so ids stay stable when a line is fixed); ``where`` is the human position used in messages.
    """

    index: int
    where: str
    row: dict[str, Any] | None
    error: str | None = None


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"data path is a directory, not a file: {path}") from None
    except OSError as err:
        raise DataError(f"cannot read data file {path}: {err}") from None
    # Sniff gzip by its magic bytes rather than trusting the extension.
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path} looks gzip-compressed but cannot be decompressed: {err}") from None
    if b"\x00" in raw[:8192]:
        raise DataError(f"{path} is a binary file, not JSON lines / JSON / CSV text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); expected JSON lines / JSON / CSV") from None
    if not text.strip():
        raise DataError(f"data file {path} is empty")
    return text


def _jsonl_rows(text: str) -> list[RawRow]:
    rows: list[RawRow] = []
    index = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing newline) are not records
        where = f"line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append(RawRow(index, where, None, f"invalid JSON ({err.msg})"))
        else:
            err_msg = None if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"
            rows.append(RawRow(index, where, obj if err_msg is None else None, err_msg))
        index += 1
    return rows


def _json_list_rows(items: list[Any]) -> list[RawRow]:
    rows = []
    for i, obj in enumerate(items):
        err = None if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"
        rows.append(RawRow(i, f"item {i + 1}", obj if err is None else None, err))
    return rows


def _json_document_rows(path: Path, text: str) -> list[RawRow] | None:
    """Rows of a whole-file JSON document, or None when the text is not one JSON value."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(doc, list):
        return _json_list_rows(doc)
    if isinstance(doc, dict):
        for key in _LIST_KEYS:
            if isinstance(doc.get(key), list):
                return _json_list_rows(doc[key])
        return [RawRow(0, "line 1", doc)]  # a one-line jsonl file
    raise DataError(f"{path}: expected a JSON list of objects, got a JSON {type(doc).__name__}")


def _csv_rows(text: str) -> list[RawRow]:
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for i, rec in enumerate(reader):
        where = f"row {i + 2}"  # row 1 is the header
        if None in rec:  # more cells than header columns
            rows.append(RawRow(i, where, None, "more cells than header columns"))
        else:
            rows.append(RawRow(i, where, dict(rec)))
    return rows


def read_rows(path: str | os.PathLike[str]) -> list[RawRow]:
    """Read a jsonl / jsonl.gz / json (list) / csv file into raw rows.

    The format comes from the extension when it is explicit (``.csv``, ``.json``, ``.jsonl``) and
    from the content otherwise, because benchmark copies are often misnamed (jsonl saved as .json).
    """
    p = Path(path)
    text = _decode(p)
    suffixes = [s.lower() for s in p.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    first = text.lstrip()[:1]
    if ext == ".csv" or (ext not in (".json", ".jsonl") and first not in "[{"):
        rows = _csv_rows(text)
    elif first == "[" or (ext == ".json" and first == "{"):
        doc_rows = _json_document_rows(p, text)
        rows = doc_rows if doc_rows is not None else _jsonl_rows(text)
    else:
        rows = _jsonl_rows(text)
    if not rows:
        raise DataError(f"data file {p} holds no records")
    return rows


def hub_rows(hub_id: str, config: str | None, split: str) -> list[RawRow]:
    """Load one split from the hub with ``datasets.load_dataset``; any failure becomes DataError."""
    what = f"{hub_id}" + (f" (config {config})" if config else "") + f" split {split!r}"
    try:
        import datasets  # imported lazily: it is slow to import and only needed online

        args = (hub_id, config) if config else (hub_id,)
        ds = datasets.load_dataset(*args, split=split)
        records = [dict(r) for r in ds]
    except Exception as err:  # noqa: BLE001 - offline, gated, renamed... all mean "use a local file"
        raise DataError(
            f"could not load {what} from the Hugging Face hub ({type(err).__name__}: "
            f"{err}). If you are offline, {OFFLINE_HINT}."
        ) from None
    return [RawRow(i, f"row {i + 1}", r) for i, r in enumerate(records)]


def data_dir() -> Path | None:
    """The directory named by DIFFMAS_DATA_DIR, or None when it is unset or empty."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def find_in_data_dir(root: Path, subdir: str, names: tuple[str, ...], what: str) -> Path:
    """Find the first existing ``root/subdir/name`` (or its ``.gz`` twin) or explain what is there."""
    folder = root / subdir
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    expected = " or ".join(str(folder / n) for n in names)
    if folder.is_dir():
        listing = sorted(p.name for p in folder.iterdir())
        there = f"{folder} contains: {', '.join(listing) if listing else 'nothing'}"
    elif root.is_dir():
        listing = sorted(p.name for p in root.iterdir())
        there = f"{folder} does not exist; {root} contains: {', '.join(listing) if listing else 'nothing'}"
    else:
        there = f"{root} does not exist"
    raise DataError(
        f"{what}: expected {expected} ({DATA_DIR_ENV}={root}), but it is missing; {there}. "
        f"Pass --data-path FILE to use another file."
    )
