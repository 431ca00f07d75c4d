"""The curation manifest: one Parquet row per clip, written as append-only parts plus a completion log.

Layout under the output folder ``OUT``::

    OUT/manifest/part-<worker>-<seq>.parquet   rows of one or more finished videos (never rewritten)
    OUT/manifest/_completed.jsonl              one JSON line per finished video: video_id, source, part, rows
    OUT/manifest_filtered.parquet              every row with ``keep`` / ``drop_reason`` from the filter pass

Crash safety (a run killed with SIGKILL at any moment loses nothing already logged and duplicates nothing):

1. a part is written to ``.part-*.tmp``, fsynced, renamed into place, and the folder fsynced;
2. only then are its videos' lines appended to the log (one ``write`` + fsync);
3. a video counts as done only if its log line is complete (ends with a newline) and its part exists;
4. readers take from each part only the rows of videos that the log names for that part, so a part whose
   log lines were cut short contributes nothing extra; at restart, parts no log line names and temp
   files are removed, and a torn last log line is truncated away.

Test hook: the crash-safety tests make the process SIGKILL itself at a named moment with the environment
variable :data:`CRASH_ENV` (see :func:`crash_point`). It is read from the process environment only; no node
input, workflow, config or manifest field can set it.

Paths in ``clip_path``, ``keyframe_paths`` and ``clip_embedding_path`` are relative to ``OUT`` (posix
separators), so the folder can be moved; :func:`resolve` turns them into absolute paths. ``source`` is absolute.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InputError
from ..fsutil import replace_atomic
from .manifest_rows import (  # noqa: F401 - re-exported: the row layout lives in the Arrow-free module
    COLUMN_SPECS,
    THUMB_DIR,
    THUMB_KEY,
    THUMB_SIDE,
    TRAINER_COLUMNS,
    empty_row,
    thumbnail_rel,
    video_status,
)

log = logging.getLogger(__name__)

MANIFEST_DIR = "manifest"
LOG_NAME = "_completed.jsonl"
FILTERED_NAME = "manifest_filtered.parquet"
SCHEMA_VERSION = "1"
_PART_RE = re.compile(r"^part-(?P<worker>[A-Za-z0-9_]+)-(?P<seq>\d+)\.parquet$")

#: TEST HOOK, environment only: ``SVD_LAB_TEST_CRASH=<point>[@<n>]`` makes the process SIGKILL itself the n-th
#: time (default: the first) it reaches the named point. Unset (always, outside the crash-safety tests), the
#: points do nothing.
CRASH_ENV = "SVD_LAB_TEST_CRASH"
#: The named points, in the order a run reaches them: the engine's config written (no video yet), a video's
#: result received by the driver (not yet buffered), a part's temp file half written (not renamed), a part
#: renamed into place (not yet logged), its log lines written but the last one torn, its log lines complete.
CRASH_POINTS = ("config-written", "result-received", "part-write", "part-renamed", "log-torn", "logged")
_crash_hits: dict[str, int] = {}

#: Column -> (arrow type, meaning), from :data:`manifest_rows.COLUMN_SPECS` (the one definition).
_ARROW_TYPES: dict[str, pa.DataType] = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(),
                                        "float64": pa.float64(), "bool": pa.bool_(),
                                        "list<string>": pa.list_(pa.string())}
COLUMNS: dict[str, tuple[pa.DataType, str]] = {name: (_ARROW_TYPES[kind], meaning)
                                               for name, (kind, meaning) in COLUMN_SPECS.items()}

SCHEMA = pa.schema([pa.field(name, kind) for name, (kind, _) in COLUMNS.items()],
                   metadata={"svd_lab_manifest": SCHEMA_VERSION,
                             "paths": "clip_path, keyframe_paths, clip_embedding_path are relative to the output "
                                      "folder; source is absolute"})

def to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts; unknown keys rejected, missing keys null) -> a table with :data:`SCHEMA`."""
    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise InputError(f"manifest rows have unknown columns {sorted(unknown)}; known: {list(COLUMNS)}")
    full = [{**empty_row(), **row} for row in rows]
    table = json_table(full, SCHEMA)
    return table if table is not None else pa.Table.from_pylist(full, schema=SCHEMA)


def json_table(rows: list[Mapping[str, Any]], schema: pa.Schema) -> pa.Table | None:
    """``rows`` (dicts of plain Python values) -> a table with ``schema`` through Arrow's JSON reader; None where
    JSON cannot carry the rows exactly (NaN / infinity, numpy scalars, text that is not UTF-8, a value of
    another type than its column's), for the caller to convert with pyarrow's Python converter (which raises
    its usual error, or converts as it always did).

    Why not that converter always: pa.array / Table.from_pylist on Python objects make pyarrow import pandas
    on first use (about 0.3 s of CPU), the largest fixed cost left in a curation driver after its workers
    finish. The values that get here are identical either way (tests compare both)."""
    if not rows:
        return schema.empty_table()
    import pyarrow.json as pa_json  # not at module level: only drivers write tables

    try:
        data = "".join(json.dumps(row, allow_nan=False, ensure_ascii=False) + "\n" for row in rows).encode()
        table = pa_json.read_json(
            pa.py_buffer(data), read_options=pa_json.ReadOptions(use_threads=False),
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error"))
    except (TypeError, ValueError):  # ValueError includes pa.ArrowInvalid and UnicodeEncodeError
        return None
    if table.schema.names != schema.names:  # pragma: no cover - the reader keeps the explicit schema's order
        return None
    return table.cast(schema)  # same types; brings the schema's metadata


def arrow_array(values: Iterable[Any], kind: pa.DataType) -> pa.Array:
    """A column of plain Python ``values`` of type ``kind`` (see :func:`json_table` for why not pa.array)."""
    values = list(values)
    table = json_table([{"v": v} for v in values], pa.schema([pa.field("v", kind)]))
    return table.column("v").combine_chunks() if table is not None else pa.array(values, kind)


def resolve(out_dir: str | os.PathLike[str], rel: str | None) -> Path | None:
    """A manifest path (relative to the output folder) as an absolute path; None for ''/None."""
    if not rel:
        return None
    path = Path(rel)
    return path if path.is_absolute() else Path(out_dir).absolute() / path


#: Per-stage seconds of the last run (engine.write_timings), shown by the report.
TIMINGS_NAME = "timings.json"


def crash_point(name: str, prepare: Callable[[], object] | None = None) -> None:
    """Test hook: SIGKILL this process here when :data:`CRASH_ENV` names this point and its hit count is reached
    (`prepare` runs just before, e.g. to leave a half-written file). A no-op when the variable is unset."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] < (int(nth) if nth.isdigit() else 1):
        return
    if prepare is not None:
        prepare()
    log.critical("%s=%s: killing this process (pid %d) at %r", CRASH_ENV, spec, os.getpid(), name)
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _torn(path: Path) -> None:
    """Cut a file to half its length (a write the kill interrupted)."""
    with open(path, "rb+") as handle:
        handle.truncate(os.path.getsize(path) // 2)
        os.fsync(handle.fileno())


# ------------------------------------------------------------------------------------- atomic files


def write_table_atomic(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` to ``path`` via a temp file in the same folder, fsync, rename: readers never see half."""
    return replace_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


# --------------------------------------------------------------------------------- completion log


@dataclass(frozen=True)
class Completed:
    """One log line: a finished video, the part holding its rows, and how many rows it has."""

    video_id: str
    source: str
    part: str
    rows: int
    status: str
    time: float
    timed_out: bool = False


def read_log(manifest_dir: str | os.PathLike[str]) -> list[Completed]:
    """Complete log lines in order (a torn last line, without its newline, is ignored)."""
    path = Path(manifest_dir) / LOG_NAME
    if not path.is_file():
        return []
    entries = []
    data = path.read_bytes()
    for line in data.split(b"\n")[:-1]:  # the piece after the last newline is torn or empty
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            entries.append(Completed(str(item["video_id"]), str(item["source"]), str(item["part"]),
                                     int(item["rows"]), str(item.get("status", "ok")), float(item.get("time", 0)),
                                     bool(item.get("timed_out", False))))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed line in %s: %r", path, line[:200])
    return entries


def completed(manifest_dir: str | os.PathLike[str]) -> dict[str, Completed]:
    """video_id -> its completion entry, for videos whose part file exists (the first entry wins, except that a
    later entry supersedes a timed-out one: a run with retry_timeouts curated that video again)."""
    manifest_dir = Path(manifest_dir)
    done: dict[str, Completed] = {}
    for entry in read_log(manifest_dir):
        earlier = done.get(entry.video_id)
        if (earlier is None or earlier.timed_out) and (manifest_dir / entry.part).is_file():
            done[entry.video_id] = entry
    return done


def _latest_per_source(entries: Iterable[Completed]) -> dict[str, Completed]:
    """video_id -> entry, keeping per source only the video_id logged last (a changed file supersedes)."""
    by_source: dict[str, Completed] = {}
    for entry in entries:
        by_source[entry.source] = entry
    return {e.video_id: e for e in by_source.values()}


def read_part(path: str | os.PathLike[str]) -> pa.Table:
    """One Parquet file of manifest rows with :data:`SCHEMA`. A file written with this schema is read directly
    (pq.read_table goes through pyarrow.dataset, whose import loads pandas: about 0.3 s of a driver); any other
    file (older columns) through pq.read_table, which fills and casts it to the schema."""
    table = pq.ParquetFile(path).read()
    return table if table.schema.equals(SCHEMA) else pq.read_table(path, schema=SCHEMA)


def read_manifest(out_dir: str | os.PathLike[str], *, columns: list[str] | None = None) -> pa.Table:
    """Every logged row of the run in ``out_dir`` (no duplicates), sorted by source and clip index.

    When a source file changed between runs (new size/mtime, so a new video_id), only its latest rows count.
    """
    manifest_dir = Path(out_dir) / MANIFEST_DIR
    if not manifest_dir.is_dir():
        raise InputError(f"no curation manifest in {out_dir}: {manifest_dir} does not exist. Run `svd-lab curate "
                         f"INPUT --out {out_dir}` first")
    done = _latest_per_source(completed(manifest_dir).values())
    by_part: dict[str, set[str]] = {}
    for entry in done.values():
        by_part.setdefault(entry.part, set()).add(entry.video_id)
    tables = []
    for part, video_ids in sorted(by_part.items()):
        table = read_part(manifest_dir / part)
        mask = pc.is_in(table["video_id"], value_set=arrow_array(sorted(video_ids), pa.string()))
        tables.append(table.filter(mask))
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    if len(table):
        table = table.sort_by([("source", "ascending"), ("clip_index", "ascending")])
    return table.select(columns) if columns else table


# -------------------------------------------------------------------------------------------- writer


def _timed_out(rows: list[dict[str, Any]]) -> bool:
    """A video whose single row is the time limit's error (see workers.timeout_text)."""
    return len(rows) == 1 and rows[0].get("status") == "error" and str(rows[0].get("error") or "").startswith(
        "timed out after")


class ManifestWriter:
    """Appends finished videos to ``OUT/manifest`` as parts + log lines; one writer per output folder.

    ``add(video_id, source, rows)`` buffers a video; ``flush()`` writes the buffered videos as one part and
    logs them. It flushes by itself every ``videos_per_part`` videos or ``flush_seconds`` seconds.
    """

    def __init__(self, out_dir: str | os.PathLike[str], *, worker: str = "w0", videos_per_part: int = 32,
                 flush_seconds: float = 30.0) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", worker):
            raise InputError(f"worker label {worker!r} must be letters, digits or '_'")
        self.dir = Path(out_dir) / MANIFEST_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.worker = worker
        self.videos_per_part = max(1, int(videos_per_part))
        self.flush_seconds = float(flush_seconds)
        self._pending: list[tuple[str, str, list[dict[str, Any]]]] = []
        self._last_flush = time.monotonic()
        self.recover()
        seqs = [int(m["seq"]) for p in self.dir.iterdir() if (m := _PART_RE.match(p.name)) and m["worker"] == worker]
        self._seq = max(seqs, default=-1) + 1
        self.parts_written = 0
        self.rows_written = 0

    def recover(self) -> list[str]:
        """Repair after a kill: truncate a torn last log line, delete temp files and parts no line names."""
        log_path = self.dir / LOG_NAME
        if log_path.is_file():
            data = log_path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(log_path, "rb+") as handle:
                    handle.truncate(data.rfind(b"\n") + 1)
                    os.fsync(handle.fileno())
                log.warning("truncated a torn last line of %s (the run was killed while logging)", log_path)
        named = {entry.part for entry in read_log(self.dir)}
        removed = []
        for path in self.dir.iterdir():
            orphan = _PART_RE.match(path.name) and path.name not in named
            if orphan or (path.name.startswith(".") and path.name.endswith(".tmp")):
                path.unlink(missing_ok=True)
                removed.append(path.name)
        if removed:
            log.info("removed %d unlogged part/temp file(s) in %s: %s", len(removed), self.dir, removed[:5])
        return removed

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, video_id: str, source: str, rows: list[dict[str, Any]]) -> bool:
        """Buffer one finished video; returns True when this call flushed a part."""
        self._pending.append((video_id, source, rows))
        due = time.monotonic() - self._last_flush >= self.flush_seconds
        if len(self._pending) >= self.videos_per_part or due:
            self.flush()
            return True
        return False

    def flush(self) -> str | None:
        """Write the buffered videos as one part, then log them; returns the part's file name."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        name = f"part-{self.worker}-{self._seq:06d}.parquet"
        self._seq += 1
        table = to_table(row for _, _, rows in pending for row in rows)

        def write_part(tmp: Path) -> None:
            pq.write_table(table, tmp, compression="zstd")
            crash_point("part-write", lambda: _torn(tmp))

        replace_atomic(self.dir / name, write_part)
        crash_point("part-renamed")
        now = time.time()
        lines = "".join(json.dumps({"video_id": vid, "source": src, "part": name, "rows": len(rows),
                                    "status": video_status(r.get("status", "ok") for r in rows), "time": now,
                                    **({"timed_out": True} if _timed_out(rows) else {})}) + "\n"
                        for vid, src, rows in pending)
        with open(self.dir / LOG_NAME, "a", encoding="utf-8") as handle:

            def write_torn() -> None:  # all lines but the second half of the last one
                last = len(lines) - (lines.rstrip("\n").rfind("\n") + 1)  # the last line's length
                handle.write(lines[: len(lines) - last // 2])
                handle.flush()
                os.fsync(handle.fileno())

            crash_point("log-torn", write_torn)
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        crash_point("logged")
        self.parts_written += 1
        self.rows_written += len(table)
        return name

    def close(self) -> None:
        self.flush()
