"""The filter pass: thresholds per score, absolute or as a fraction of the whole dataset (SVD's protocol of
removing the bottom 12.5 / 25 / 50 % per annotation), with the reason recorded for every dropped clip.

A rule is ``SCORE:MODE=VALUE``:

* ``min`` / ``max``: drop clips whose score is below / above VALUE (``text_area:max=0.07``, the LVD-F rule);
* ``bottom`` / ``top``: drop the lowest / highest fraction VALUE of the clips that have the score
  (``motion_score:bottom=0.25``). Fractions are rank-based over every ``ok`` clip of the manifest, so
  "25 %" drops exactly round(0.25 n) clips even when many share a value (e.g. a peak of static clips at 0);
  ties are broken by clip_id. The threshold shown is the first kept value.

Every rule is evaluated on the same unfiltered dataset (the per-axis thresholds do not depend on each
other); a clip is kept when it passes all of them. A clip without the score (e.g. no aesthetic head) passes
that rule; a rule whose score no clip has is skipped with a note. Status rows (error / empty / dropped) are never
kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError
from ..fsutil import write_text_atomic
from .dedup import DEDUP_JSON, DUPLICATE_PREFIX, DedupConfig, DedupResult, dedup_table, load_config
from .manifest import COLUMNS, FILTERED_NAME, arrow_array, read_manifest, read_part, write_table_atomic

log = logging.getLogger(__name__)

MODES = ("min", "max", "bottom", "top")
FILTER_JSON = "filter.json"
#: Scores the report draws and rules usually name (any numeric column works in a rule).
SCORES = ("motion_score", "text_area", "aesthetic", "clip_score", "duration")
_NUMERIC = {name for name, (kind, _) in COLUMNS.items() if pa.types.is_integer(kind) or pa.types.is_floating(kind)}
_RULE_RE = re.compile(r"^\s*(?P<score>[a-z_]+)\s*:\s*(?P<mode>[a-z]+)\s*=\s*(?P<value>[-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class FilterRule:
    """Drop clips whose ``score`` is below/above ``value`` (min/max) or in the bottom/top ``value`` fraction."""

    score: str
    mode: str
    value: float

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise ConfigError(f"filter rule {self.score}:{self.mode}: the threshold must be a finite number, got "
                              f"{self.value!r} (NaN and Inf are refused)")
        if self.score not in _NUMERIC:
            raise ConfigError(f"filter score {self.score!r} is not a numeric manifest column; use one of "
                              f"{sorted(_NUMERIC)}")
        if self.mode not in MODES:
            raise ConfigError(f"filter mode {self.mode!r} unknown; choose from {list(MODES)} (e.g. "
                              "motion_score:bottom=0.25)")
        if self.mode in ("bottom", "top") and not 0.0 <= self.value <= 1.0:
            raise ConfigError(f"{self.score}:{self.mode}={self.value}: a fraction must be within 0..1 (0.25 = 25 %)")

    @classmethod
    def parse(cls, text: str) -> FilterRule:
        """``"motion_score:bottom=0.25"`` -> FilterRule('motion_score', 'bottom', 0.25)."""
        match = _RULE_RE.match(text)
        if match is None:
            raise ConfigError(f"cannot read filter rule {text!r}; write SCORE:MODE=VALUE, e.g. "
                              "motion_score:bottom=0.25 or text_area:max=0.07")
        try:
            value = float(match["value"])
        except ValueError:
            raise ConfigError(f"filter rule {text!r}: {match['value']!r} is not a number") from None
        return cls(match["score"], match["mode"], value)

    def __str__(self) -> str:
        return f"{self.score}:{self.mode}={self.value:g}"

    def describe(self, threshold: float | None) -> str:
        """The drop reason this rule writes (the same text for every clip it drops)."""
        if self.mode == "min":
            return f"{self.score} < {self.value:g}"
        if self.mode == "max":
            return f"{self.score} > {self.value:g}"
        where = "lowest" if self.mode == "bottom" else "highest"
        cut = f" (threshold {threshold:.4g})" if threshold is not None else ""
        return f"{self.score} in the {where} {self.value * 100:g}%{cut}"


#: Named rule sets. "svd": the thresholds the paper's human-preference study chose (appendix E.2.2: remove
#: the 25 % most static, the 25 % least aesthetic, the 50 % lowest CLIP score) and LVD-F's text rule (> 7 %).
PRESETS = {
    "svd": "motion_score:bottom=0.25, text_area:max=0.07, aesthetic:bottom=0.25, clip_score:bottom=0.5",
    "none": "",
}


def parse_rules(texts: Iterable[str] | str | None) -> list[FilterRule]:
    """Rules from strings; one string may hold several separated by commas, semicolons or newlines, or be
    a preset name from :data:`PRESETS`."""
    if texts is None:
        return []
    if isinstance(texts, str):
        texts = [texts]
    parts = [t.strip() for text in texts for t in re.split(r"[,;\n]", text) if t.strip()]
    parts = [p for part in parts for p in (re.split(r",", PRESETS[part]) if part in PRESETS else [part])]
    return [FilterRule.parse(p) for p in parts if p.strip()]


@dataclass(frozen=True)
class Threshold:
    """How one rule worked out: the cut value, clips considered / dropped / without the score."""

    rule: str
    score: str
    mode: str
    value: float
    threshold: float | None
    considered: int
    dropped: int
    missing: int
    reason: str
    note: str = ""


@dataclass
class FilterResult:
    table: pa.Table
    thresholds: list[Threshold] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return int(pc.sum(self.table["keep"]).as_py() or 0)  # not to_numpy: it makes pyarrow import pandas

    def reason_counts(self) -> Counter[str]:
        """Drop reason -> clips (a clip dropped by two rules counts for both; status rows by status)."""
        counts: Counter[str] = Counter()
        for reason, status in zip(self.table["drop_reason"].to_pylist(), self.table["status"].to_pylist(),
                                  strict=True):
            if status == "dropped":  # a span that gave no clip, by kind: too short, trimmed away, transition
                counts[f"dropped: {reason.removeprefix('dropped: ').split(':', 1)[0]}"] += 1
            elif status != "ok":
                counts[f"status {status}"] += 1
            elif reason:  # each duplicate names its own representative: they count as one reason
                counts.update("near-duplicate of a kept clip" if r.startswith(DUPLICATE_PREFIX) else r
                              for r in reason.split("; "))
        return counts

    def to_json(self, rules: Sequence[FilterRule]) -> str:
        return json.dumps({"rules": [str(r) for r in rules], "thresholds": [asdict(t) for t in self.thresholds],
                           "rows": len(self.table), "kept": self.kept, "reasons": dict(self.reason_counts())},
                          indent=1)


def _rank_threshold(values: np.ndarray, ids: np.ndarray, fraction: float, top: bool) -> tuple[np.ndarray, float | None]:
    """Mask of the round(fraction n) lowest (highest) values, ties by id; and the first kept value."""
    n = len(values)
    k = int(np.floor(fraction * n + 0.5))
    keys = -values if top else values
    order = np.lexsort((ids, keys))
    drop = np.zeros(n, bool)
    drop[order[:k]] = True
    threshold = float(values[order[k]]) if k < n else None
    return drop, threshold


def apply_filters(table: pa.Table, rules: Sequence[FilterRule]) -> FilterResult:
    """Set ``keep`` and ``drop_reason`` of every row (a new table); thresholds over the whole table."""
    status = np.array(table["status"].to_pylist(), dtype=object)
    ok = status == "ok"
    ids = np.array(table["clip_id"].to_pylist(), dtype=object).astype(str)
    reasons: list[list[str]] = [[] for _ in range(len(table))]
    thresholds = []
    for rule in rules:
        raw = table[rule.score].to_pylist()
        have = np.array([v is not None and np.isfinite(v) for v in raw], bool) & ok
        values = np.array([v if h else np.nan for v, h in zip(raw, have, strict=True)], dtype=np.float64)
        drop = np.zeros(len(table), bool)
        threshold, note = None, ""
        if not have.any():
            note = f"no clip has {rule.score}: rule skipped"
            log.info("filter %s: %s", rule, note)
        elif rule.mode in ("min", "max"):
            threshold = rule.value
            drop[have] = values[have] < rule.value if rule.mode == "min" else values[have] > rule.value
        else:
            sub, threshold = _rank_threshold(values[have], ids[have], rule.value, rule.mode == "top")
            drop[np.flatnonzero(have)[sub]] = True
        reason = rule.describe(threshold)
        for i in np.flatnonzero(drop):
            reasons[i].append(reason)
        thresholds.append(Threshold(str(rule), rule.score, rule.mode, rule.value, threshold, int(have.sum()),
                                    int(drop.sum()), int((ok & ~have).sum()), reason, note))
    errors = table["error"].to_pylist()
    drop_reason = [("; ".join(r) if s == "ok" else f"{s}: {e}") for r, s, e in zip(reasons, status, errors,
                                                                                   strict=True)]
    keep = [s == "ok" and not r for r, s in zip(reasons, status, strict=True)]
    out = table.set_column(table.schema.get_field_index("keep"), "keep", arrow_array(keep, pa.bool_()))
    out = out.set_column(out.schema.get_field_index("drop_reason"), "drop_reason",
                         arrow_array(drop_reason, pa.string()))
    return FilterResult(out, thresholds)


def load_rules(out_dir: str | os.PathLike[str]) -> list[FilterRule] | None:
    """The rules of the last filter pass in ``out_dir`` (None when it was never filtered)."""
    path = Path(out_dir) / FILTER_JSON
    if not path.is_file():
        return None
    return parse_rules(json.loads(path.read_text(encoding="utf-8")).get("rules", []))


def filter_manifest(out_dir: str | os.PathLike[str], rules: Sequence[FilterRule]) -> FilterResult:
    """Second pass over a finished run: writes OUT/manifest_filtered.parquet and OUT/filter.json atomically.
    A folder deduplicated before (OUT/dedup.json) is deduplicated again with the same settings."""
    result = reapply(out_dir, apply_filters(read_manifest(out_dir), rules))  # the folder's dedup, if it has one
    write_table_atomic(result.table, Path(out_dir) / FILTERED_NAME)
    write_text_atomic(result.to_json(rules), Path(out_dir) / FILTER_JSON)
    return result


def reapply(out_dir: str | os.PathLike[str], result: FilterResult) -> FilterResult:
    """After a filter pass: the dedup with the folder's stored settings (unchanged when there are none)."""
    config = load_config(out_dir)
    if config is None:
        return result
    found = dedup_table(result.table, out_dir, config)
    write_text_atomic(found.to_json(), Path(out_dir) / DEDUP_JSON)
    return FilterResult(found.table, result.thresholds)


def dedup_manifest(out_dir: str | os.PathLike[str], config: DedupConfig | None = None) -> DedupResult:
    """Deduplicate a finished run: reads OUT/manifest_filtered.parquet (else the manifest, unfiltered), writes it
    back with duplicates marked, and OUT/dedup.json (settings, counts, pairs), both atomically."""
    out = Path(out_dir)
    filtered = out / FILTERED_NAME
    if filtered.is_file():
        table = read_part(filtered)
    else:
        table = apply_filters(read_manifest(out), []).table
    found = dedup_table(table, out, config)
    write_table_atomic(found.table, filtered)
    write_text_atomic(found.to_json(), out / DEDUP_JSON)
    return found
