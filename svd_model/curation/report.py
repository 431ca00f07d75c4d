"""A self-contained HTML report of a curation run, for picking thresholds by looking.

One file (inline SVG, thumbnails as base64 JPEG): counts, a histogram per score with the chosen thresholds
marked and kept / dropped clips stacked, for every threshold the keyframes of the clips just on either side
of it, near-duplicate pairs (kept next to dropped), the clips dropped per reason, and a table of the files that
failed.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..fsutil import write_text_atomic
from .filtering import FILTER_JSON, SCORES, FilterResult, Threshold, apply_filters
from .manifest import FILTERED_NAME, THUMB_KEY, TIMINGS_NAME, read_manifest, read_part, resolve, video_status

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
KEPT, DROPPED, LINE = "#3a9d5d", "#c8553d", "#1f3b73"


@dataclass(frozen=True)
class ReportInfo:
    """Where the report went and the numbers its header shows."""

    path: Path
    counts: dict[str, Any] = field(default_factory=dict)
    thresholds: tuple[Threshold, ...] = ()

    def summary(self) -> str:
        c = self.counts
        lines = [f"{c['videos']} videos ({c['errors']} failed, {c['empty']} without clips), {c['clips']} clips, "
                 f"{c['kept']} kept ({span(c['kept_hours'])}); {c['dropped']} spans between cuts dropped (too short, "
                 "trimmed away, transitions: status 'dropped' rows)"]
        lines += [f"{t.rule}: {t.dropped} dropped" + (f" at {t.threshold:.4g}" if t.threshold is not None else "")
                  + (f" ({t.note})" if t.note else "") for t in self.thresholds]
        return "\n".join(lines)


def span(hours: float) -> str:
    """A duration for people: '42 s', '12.5 min' or '3.20 h'."""
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.2f} h"


def _counts(table: pa.Table) -> dict[str, Any]:
    status = table["status"].to_pylist()
    per_video: dict[str, list[str]] = {}
    for vid, s in zip(table["video_id"].to_pylist(), status, strict=True):
        per_video.setdefault(vid, []).append(s)
    videos = {vid: video_status(s) for vid, s in per_video.items()}  # a video's rows: clips, dropped spans, status
    keep = np.array(table["keep"].to_pylist(), bool)
    durations = np.array([d or 0.0 for d in table["duration"].to_pylist()], float)
    return {"videos": len(videos), "errors": sum(s == "error" for s in videos.values()),
            "empty": sum(s == "empty" for s in videos.values()), "clips": sum(s == "ok" for s in status),
            "dropped": sum(s == "dropped" for s in status),
            "kept": int(keep.sum()), "kept_hours": float(durations[keep].sum() / 3600),
            "hours": float(durations.sum() / 3600)}


# ------------------------------------------------------------------------------------------- pieces


def _histogram(values: np.ndarray, kept: np.ndarray, marks: Sequence[tuple[float, str]], bins: int = 40,
               size: tuple[int, int] = (560, 170)) -> str:
    """Inline SVG: stacked kept / dropped counts per bin, threshold lines with labels."""
    width, height = size
    pad_l, pad_b, pad_t = 40, 22, 16
    lo, hi = float(values.min()), float(values.max())
    lo, hi = min([lo, *(m for m, _ in marks)]), max([hi, *(m for m, _ in marks)])
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    k_counts, _ = np.histogram(values[kept], edges)
    d_counts, _ = np.histogram(values[~kept], edges)
    top = max(1, int((k_counts + d_counts).max()))
    plot_w, plot_h = width - pad_l - 8, height - pad_b - pad_t
    bar_w = plot_w / bins

    def x_of(v: float) -> float:
        return pad_l + (v - lo) / (hi - lo) * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="hist">',
             f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" stroke="#888"/>',
             f'<text x="{pad_l - 4}" y="{pad_t + 8}" text-anchor="end">{top}</text>',
             f'<text x="{pad_l}" y="{height - 6}">{lo:.3g}</text>',
             f'<text x="{pad_l + plot_w}" y="{height - 6}" text-anchor="end">{hi:.3g}</text>']
    for i, (k, d) in enumerate(zip(k_counts, d_counts, strict=True)):
        x = pad_l + i * bar_w
        hk, hd = k / top * plot_h, d / top * plot_h
        if k:
            parts.append(f'<rect x="{x:.1f}" y="{pad_t + plot_h - hk:.1f}" width="{bar_w - 1:.1f}" height="{hk:.1f}" '
                         f'fill="{KEPT}"><title>{edges[i]:.3g}..{edges[i + 1]:.3g}: {k} kept</title></rect>')
        if d:
            parts.append(f'<rect x="{x:.1f}" y="{pad_t + plot_h - hk - hd:.1f}" width="{bar_w - 1:.1f}" '
                         f'height="{hd:.1f}" fill="{DROPPED}"><title>{edges[i]:.3g}..{edges[i + 1]:.3g}: {d} dropped'
                         '</title></rect>')
    for value, label in marks:
        x = x_of(value)
        parts.append(f'<line x1="{x:.1f}" y1="{pad_t - 4}" x2="{x:.1f}" y2="{pad_t + plot_h}" stroke="{LINE}" '
                     f'stroke-width="2" stroke-dasharray="4 2"/><text x="{x + 3:.1f}" y="{pad_t + 4}" '
                     f'fill="{LINE}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _thumbnail(out_dir: Path, row: dict[str, Any], max_side: int = 160) -> str | None:
    """The clip's middle keyframe as a data URI: its tile of the video's thumbnail strip (written by the worker),
    else its written keyframes, else decoded from the source."""
    from PIL import Image

    try:
        paths = [resolve(out_dir, p) for p in row.get("keyframe_paths") or []]
        tile = _tile(out_dir, row)
        if tile is not None:
            image = tile
        elif paths:
            image = Image.open(paths[len(paths) // 2]).convert("RGB")
        else:
            image = Image.fromarray(_decode_middle(row))
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    except Exception as exc:  # noqa: BLE001 - a missing thumbnail must not stop the report
        log.info("no thumbnail for %s: %s", row.get("clip_id"), exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _tile(out_dir: Path, row: dict[str, Any]) -> Any:
    """The clip's tile of its video's thumbnail strip (pipeline.write_thumbnails), a PIL image; None without."""
    try:
        rel, x0, width = json.loads(row.get("extra") or "{}")[THUMB_KEY]
        path = resolve(out_dir, rel)
        strip = _open_strip(str(path), path.stat().st_mtime_ns)
    except (KeyError, TypeError, ValueError, OSError):
        return None
    if width <= 0 or x0 < 0 or x0 + width > strip.width:
        return None
    return strip.crop((int(x0), 0, int(x0) + int(width), strip.height))


@functools.lru_cache(maxsize=32)
def _open_strip(path: str, mtime_ns: int) -> Any:
    """A decoded strip, kept while the report reads a video's tiles (the mtime makes a rewritten file a miss)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def _decode_middle(row: dict[str, Any]) -> np.ndarray:
    from .frames_at import read_frames_at

    return read_frames_at(row["source"], [(row["start_time"] + row["end_time"]) / 2], max_side=320)[0]


def _figure(out_dir: Path, row: dict[str, Any], score: str) -> str:
    uri = _thumbnail(out_dir, row)
    img = f'<img src="{uri}" alt="">' if uri else '<div class="noimg">no image</div>'
    state = "kept" if row["keep"] else "dropped"
    title = html.escape(f"{row['source_rel']} {row['start_time']:.2f}-{row['end_time']:.2f} s; {row['drop_reason']}")
    return (f'<figure class="{state}" title="{title}">{img}<figcaption>{score} {row[score]:.4g}<br>'
            f'{html.escape(row["clip_id"])}</figcaption></figure>')


def _near_threshold(out_dir: Path, rows: list[dict[str, Any]], t: Threshold, per_side: int) -> str:
    """Keyframes of the clips passing the rule closest to its threshold, and the dropped ones closest to it."""
    scored = [r for r in rows if r["status"] == "ok" and r[t.score] is not None]
    dropped = [r for r in scored if t.reason in (r["drop_reason"] or "").split("; ")]
    passed = [r for r in scored if t.reason not in (r["drop_reason"] or "").split("; ")]
    distance = (lambda r: abs(r[t.score] - t.threshold)) if t.threshold is not None else (lambda r: 0.0)
    passed = sorted(passed, key=distance)[:per_side]
    dropped = sorted(dropped, key=distance)[:per_side]
    strips = ["\n".join(_figure(out_dir, r, t.score) for r in group) or "<p>none</p>" for group in (passed, dropped)]
    return (f'<div class="pair"><div><h4>passing, nearest the threshold</h4><div class="strip">{strips[0]}</div>'
            f'</div><div><h4>dropped by this rule, nearest the threshold</h4><div class="strip">{strips[1]}</div>'
            "</div></div>")


DUP_CSS = (".dups{display:flex;flex-wrap:wrap;gap:10px}.dup{display:flex;gap:4px;align-items:flex-start;"
           "border:1px solid #ccc;padding:4px}.dup .sim{font-size:11px;max-width:90px}")


def _duplicates(out_dir: Path, rows: list[dict[str, Any]], max_pairs: int) -> list[str]:
    """The near-duplicates section (empty when the folder was never deduplicated): the count, then per dropped
    clip its thumbnail next to the kept representative's, with their similarities (from OUT/dedup.json; pairs
    the current table no longer marks are left out)."""
    from .dedup import stored_pairs, stored_summary

    summary = stored_summary(out_dir)
    if not summary:
        return []
    by_id = {r["clip_id"]: r for r in rows}
    pairs = [p for p in stored_pairs(out_dir) if p.kept in by_id and p.dropped in by_id
             and p.reason() in (by_id[p.dropped]["drop_reason"] or "").split("; ")]
    parts = [f"<style>{DUP_CSS}</style><h2>Near-duplicates ({len(pairs)} dropped)</h2>",
             f'<p class="note">{html.escape(summary)}</p>']
    if not pairs:
        return [*parts, "<p>none found</p>"]
    figures = []
    for pair in pairs[:max_pairs]:
        sims = [f"cosine {pair.cosine:.3f}"] if pair.cosine is not None else []
        sims += [f"hash distance {pair.hamming}"] if pair.hamming is not None else []
        cells = []
        for row, state in ((by_id[pair.kept], "kept"), (by_id[pair.dropped], "dropped")):
            uri = _thumbnail(out_dir, row)
            img = f'<img src="{uri}" alt="">' if uri else '<div class="noimg">no image</div>'
            title = html.escape(f"{row['source_rel']} {row['start_time']:.2f}-{row['end_time']:.2f} s")
            cells.append(f'<figure class="{state}" title="{title}">{img}<figcaption>{state}<br>'
                         f"{html.escape(row['clip_id'])}</figcaption></figure>")
        figures.append(f'<div class="dup">{"".join(cells)}<div class="sim">{html.escape(", ".join(sims))}</div></div>')
    parts.append(f'<div class="dups">{"".join(figures)}</div>')
    if len(pairs) > max_pairs:
        parts.append(f'<p class="note">{len(pairs) - max_pairs} more pairs in dedup.json</p>')
    return parts


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1250px}h2{margin-top:32px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top}svg.hist text{font:11px sans-serif}.strip{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;border:3px solid;padding:2px;font-size:11px;max-width:170px}figure.kept{border-color:#3a9d5d}
figure.dropped{border-color:#c8553d}.pair{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.noimg{width:160px;height:90px;background:#eee}.note{color:#777}.legend span{padding:0 6px;color:#fff}"""


def _timings(out: Path) -> list[str]:
    """The per-stage timings of the last curation run (OUT/timings.json, engine.write_timings): the workers'
    stages (seconds summed over the workers, share, frames/s of that stage alone) and the driver's."""
    try:
        data = json.loads((out / TIMINGS_NAME).read_text(encoding="utf-8"))
        stages = {str(k): float(v) for k, v in data["stages"].items()}
        driver = {str(k): float(v) for k, v in data.get("driver", {}).items()}
        frames, wall = int(data.get("frames", 0)), float(data.get("wall_seconds", 0.0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    total = sum(stages.values()) or 1.0
    rows = [(k, f"{v:.2f}", f"{100 * v / total:.0f}%", f"{frames / v:.0f}" if v > 0 else "") for k, v in stages.items()]
    rows += [(f"{k} (driver)", f"{v:.2f}", "", "") for k, v in driver.items()]
    return [f"<h2>Per-stage timings</h2><p>last run: {frames} frames in {wall:.1f} s "
            f"({frames / wall if wall > 0 else 0:.0f} frames/s), engine {html.escape(str(data.get('engine', '')))}, "
            f"{int(data.get('workers', 0))} worker(s); worker stages are summed over the workers</p>",
            _table(("stage", "seconds", "share of worker time", "frames/s"), rows)]


def _stored_thresholds(out: Path) -> list[Threshold]:
    path = out / FILTER_JSON
    if not path.is_file():
        return []
    return [Threshold(**t) for t in json.loads(path.read_text(encoding="utf-8")).get("thresholds", [])]


def build_report(out_dir: str | os.PathLike[str], result: FilterResult | None = None, *, path: str | None = None,
                 per_side: int = 4, max_errors: int = 500, max_duplicates: int = 60) -> ReportInfo:
    """Write OUT/report.html (or ``path``) from a filter result, else the filtered manifest, else the raw one."""
    out = Path(out_dir)
    if result is None:
        filtered = out / FILTERED_NAME
        if filtered.is_file():
            result = FilterResult(read_part(filtered), _stored_thresholds(out))
        else:
            result = apply_filters(read_manifest(out), [])
    table, thresholds = result.table, result.thresholds
    rows = table.to_pylist()
    counts = _counts(table)
    ok = np.array([r["status"] == "ok" for r in rows], bool)
    keep = np.array([bool(r["keep"]) for r in rows], bool)
    body = [f"<h1>Curation report: {html.escape(out.absolute().name)}</h1>",  # no server path: /view serves it
            f"<p>{counts['videos']} videos: {counts['videos'] - counts['errors'] - counts['empty']} with clips, "
            f"{counts['errors']} failed, {counts['empty']} without clips. {counts['clips']} clips "
            f"({span(counts['hours'])}); <b>{counts['kept']} kept</b> ({span(counts['kept_hours'])}). "
            f"{counts['dropped']} spans between cuts gave no clip (status dropped: too short, trimmed away, "
            "transition).</p>",
            f'<p class="legend"><span style="background:{KEPT}">kept</span> <span style="background:{DROPPED}">'
            "dropped</span> dashed line: threshold</p>"]
    body += _timings(out)
    if thresholds:
        body += ["<h2>Thresholds</h2>", _table(
            ("rule", "threshold", "clips with the score", "dropped", "without the score", "note"),
            [(t.rule, "" if t.threshold is None else f"{t.threshold:.4g}", t.considered, t.dropped, t.missing, t.note)
             for t in thresholds])]
    body.append("<h2>Scores</h2>")
    for score in list(dict.fromkeys([*SCORES, *(t.score for t in thresholds)])):
        raw = [r[score] for r in rows]
        have = ok & np.array([v is not None and np.isfinite(v) for v in raw], bool)
        body.append(f"<h3>{score}</h3>")
        if not have.any():
            body.append(f'<p class="note">no clip has {score} (the step was off or its model not configured)</p>')
            continue
        values = np.array([v for v, h in zip(raw, have, strict=True) if h], float)
        marks = [(t.threshold, t.rule) for t in thresholds if t.score == score and t.threshold is not None]
        body.append(_histogram(values, keep[have], marks))
        for t in thresholds:
            if t.score == score:
                body.append(f"<h4>{html.escape(t.rule)}: {html.escape(t.reason)}</h4>")
                body.append(_near_threshold(out, rows, t, per_side))
    body += _duplicates(out, rows, max_duplicates)
    reasons = result.reason_counts()
    body += ["<h2>Dropped clips per reason</h2>",
             _table(("reason", "rows"), sorted(reasons.items(), key=lambda kv: -kv[1])) if reasons else "<p>none</p>"]
    failed = [(r["source_rel"], r["status"], r["error"]) for r in rows if r["status"] not in ("ok", "dropped")]
    listed = {r["video_id"] for r in rows if r["status"] in ("ok", "error", "empty")}  # has clips or a status row
    for r in rows:  # a video whose spans were all dropped: its first reason
        if r["status"] == "dropped" and r["video_id"] not in listed:
            listed.add(r["video_id"])
            failed.append((r["source_rel"], "empty", f"every span dropped, e.g. {r['error']}"))
    body.append(f"<h2>Files without clips ({len(failed)})</h2>")
    body.append(_table(("file", "status", "reason"), failed[:max_errors]) if failed else "<p>none</p>")
    if len(failed) > max_errors:
        body.append(f'<p class="note">{len(failed) - max_errors} more in the manifest (status != ok)</p>')
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>Curation report</title><style>{CSS}</style>'
            f"</head><body>{''.join(body)}</body></html>")
    target = Path(path) if path else out / REPORT_NAME
    write_text_atomic(page, target)
    return ReportInfo(target, counts, tuple(thresholds))
