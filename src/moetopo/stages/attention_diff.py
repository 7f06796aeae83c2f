"""The attention_diff stage: how far a fine-tune moved each projection, router and expert.

One job covers one layer of a base/tuned pair. The pair is checked from the
headers first (family, layer count, every tensor's shape); then the q/k/v/o rows of
those layers (mapped per family by :mod:`moetopo.checkpoint.attention`), the router rows and
every expert's rows are compared in one streamed pass over both checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from moetopo.artefacts import columns
from moetopo.checkpoint.attention import attention_splits, unmapped_attention
from moetopo.checkpoint.layout import MoELayer
from moetopo.checkpoint.model import OpenModel
from moetopo.diff.rows import RowMeasure, Span, compare_spans
from moetopo.errors import PairMismatchError

MAX_LISTED = 5


@dataclass
class PairCheck:
    """What two checkpoints share, and what only one of them holds (for the metadata)."""

    base: str
    tuned: str
    family: str
    n_layers: int
    moe_layers: list[int]
    only_in_base: list[str] = field(default_factory=list)
    only_in_tuned: list[str] = field(default_factory=list)
    dtype_changes: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        found = []
        for label, names in (
            ("only in the base", self.only_in_base),
            ("only in the tuned model", self.only_in_tuned),
            ("stored in another dtype by the tuned model", self.dtype_changes),
        ):
            if names:
                found.append(f"{len(names)} tensor(s) {label} (first: {names[0]!r})")
        return found

    def metadata(self, layers: list[int], not_compared: list[str]) -> dict:
        return {
            "base": self.base,
            "tuned": self.tuned,
            "family": self.family,
            "n_layers": self.n_layers,
            "moe_layers": self.moe_layers,
            "layers": layers,
            "only_in_base": self.only_in_base,
            "only_in_tuned": self.only_in_tuned,
            "dtype_changes": self.dtype_changes,
            "not_compared": not_compared,
        }


def check_pair(base: OpenModel, tuned: OpenModel, names: tuple[str, str]) -> PairCheck:
    """Refuse a pair that differs in family, layer count or a shared tensor's shape.

    Tensors held by one model only are listed, not refused (an added head, a dropped
    MTP layer); a dtype change (BF16 base, F32 fine-tune) is listed too, since values
    are compared after dequantisation.
    """
    a, b = base.layout, tuned.layout
    problems = []
    if a.family != b.family:
        problems.append(f"family: {a.family} vs {b.family}")
    if a.n_layers != b.n_layers:
        problems.append(f"layer count: {a.n_layers} vs {b.n_layers}")
    dtype_changes = []
    for name in sorted(a.logical.keys() & b.logical.keys()):
        x, y = a.logical[name], b.logical[name]
        if x.shape != y.shape:
            problems.append(
                f"shape of {name!r}: {list(x.shape)} in {base.checkpoint.root / x.data.shard} vs "
                f"{list(y.shape)} in {tuned.checkpoint.root / y.data.shard}"
            )
        elif x.data.dtype != y.data.dtype:
            dtype_changes.append(f"{name}: {x.data.dtype} -> {y.data.dtype}")
    if problems:
        shown = "; ".join(problems[:MAX_LISTED])
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise PairMismatchError(
            f"cannot diff {names[0]} ({a.root}) against {names[1]} ({b.root}): {shown}{more}"
        )
    return PairCheck(
        base=names[0],
        tuned=names[1],
        family=a.family,
        n_layers=a.n_layers,
        moe_layers=a.moe_layers,
        only_in_base=sorted(a.logical.keys() - b.logical.keys()),
        only_in_tuned=sorted(b.logical.keys() - a.logical.keys()),
        dtype_changes=dtype_changes,
    )


@dataclass
class LayerDiff:
    """The two tables of one group of layers, and what could not be compared."""

    attention: pd.DataFrame
    moe: pd.DataFrame
    warnings: list[str]
    not_compared: list[str]


@dataclass
class DiffPlan:
    """What a group's diff reads: row spans, the summary each slot feeds, tensors missing."""

    keys: list[tuple[str, int, object]] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    no_attention: list[int] = field(default_factory=list)

    def slot(self, key: tuple[str, int, object]) -> int:
        self.keys.append(key)
        return len(self.keys) - 1


def plan_diff(base: OpenModel, tuned: OpenModel, layers: list[int]) -> DiffPlan:
    """The q/k/v/o rows (mapped per family), router rows and expert rows of ``layers``."""
    layout = base.layout
    plan = DiffPlan()

    def present(name: str) -> bool:
        if name in tuned.reader:
            return True
        plan.missing.append(name)
        return False

    attention: dict[tuple[int, str], int] = {}
    for split in attention_splits(layout, base.checkpoint.config, layers):
        if not present(split.tensor):
            continue
        segments = []
        for lo, hi, projection in split.segments:
            key = (split.layer, projection)
            if key not in attention:
                attention[key] = plan.slot(("attention", split.layer, projection))
            segments.append((lo, hi, attention[key]))
        plan.spans.append(Span(split.tensor, 0, split.rows, tuple(segments), split.period))
    for layer in layers:
        if layer in layout.layers:
            plan.spans += _moe_spans(layout.layers[layer], base, present, plan.slot)
    plan.no_attention = [la for la in layers if not any(k[0] == la for k in attention)]
    return plan


def diff_layers(
    base: OpenModel,
    tuned: OpenModel,
    layers: list[int],
    measure: RowMeasure,
    chunk_bytes: int = 256 << 20,
    workers: int = 2,
) -> LayerDiff:
    """Per-projection and per-router/expert change of ``layers`` (both models read once)."""
    plan = plan_diff(base, tuned, layers)
    warnings = []
    if plan.no_attention:
        warnings.append(f"layers {plan.no_attention} have no q/k/v/o projection to compare")
    if plan.missing:
        warnings.append(
            f"{len(plan.missing)} tensor(s) of the base are missing from the tuned model and "
            f"were not compared (first: {plan.missing[0]!r}); see only_in_base in the metadata"
        )
    keys = plan.keys
    totals = compare_spans(
        base.reader, tuned.reader, plan.spans, len(keys), measure, chunk_bytes, workers
    )
    counts = dict.fromkeys(keys, 0)
    for span in plan.spans:
        for _, _, s in span.segments:
            counts[keys[s]] += 1
    attention, moe = [], []
    for s, (kind, layer, what) in enumerate(keys):
        row = {"layer": layer, **totals.summary(s)}
        if kind == "attention":
            attention.append({**row, "projection": what, "n_tensors": counts[keys[s]]})
        else:
            moe.append({**row, "kind": kind, "expert": what})
    return LayerDiff(
        _frame(attention, columns("attention_diff")),
        _frame(moe, columns("moe_diff")),
        warnings,
        unmapped_attention(base.layout, layers),
    )


def _moe_spans(moe: MoELayer, base: OpenModel, present, slot) -> list[Span]:
    """Router rows, each expert's rows (whatever the layout) and the shared expert's."""
    logical = base.layout.logical
    spans = []
    if present(moe.router):
        spans.append(
            Span.whole(
                moe.router, 0, logical[moe.router].shape[0], slot(("router", moe.layer, None))
            )
        )
    experts = [slot(("expert", moe.layer, e)) for e in range(moe.n_experts)] if moe.experts else []
    for tensor in moe.experts.values():
        per = tensor.shape[0]
        for e, s in enumerate(experts):
            name, lead, row0 = tensor.locate(e)
            if not present(name):
                continue
            start = lead[0] * per if lead else row0
            spans.append(Span.whole(name, start, start + per, s))
    shared = [n for n in moe.shared.values() if len(logical[n].shape) >= 2 and present(n)]
    if shared:
        s = slot(("shared_expert", moe.layer, None))
        spans += [Span.whole(n, 0, logical[n].shape[0], s) for n in shared]
    return spans


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    if "expert" in frame:
        frame["expert"] = frame["expert"].astype("Int64")
    return frame
