"""pairs.tsv for the Snakefile: pair ids, their models, their layers and job memory.

A pair id is ``<base>--<tuned>``; both must be models of the model sheet, so their
layouts (already parsed for the per-model stages) give the per-layer diff jobs at parse
time. How many layer jobs go into one cluster submission is the profile's business
(``group-components: attention_diff=N``), since it changes no result.
"""

from __future__ import annotations

import math
from functools import cached_property

import pandas as pd

from moetopo.errors import MoetopoError
from moetopo.pipeline.models import MB, ModelSheet


class PairSheet:
    """The base/tuned pairs to diff, checked against the model sheet."""

    def __init__(self, table: pd.DataFrame, models: ModelSheet):
        self.models = models
        known = set(models.names)
        self.pairs: dict[str, tuple[str, str]] = {}
        for base, tuned in zip(table["base"], table["tuned"], strict=True):
            unknown = [m for m in (base, tuned) if m not in known]
            if unknown:
                raise MoetopoError(
                    f"pairs sheet: {unknown[0]!r} (pair {base} -> {tuned}) is not a model of "
                    f"the model sheet (known: {', '.join(sorted(known))})"
                )
            if base == tuned:
                raise MoetopoError(f"pairs sheet: {base} is paired with itself")
            pair = f"{base}--{tuned}"
            if pair in self.pairs:
                raise MoetopoError(f"pairs sheet: {base} -> {tuned} is listed twice")
            self.pairs[pair] = (base, tuned)

    @cached_property
    def ids(self) -> list[str]:
        return list(self.pairs)

    def base(self, pair: str) -> str:
        return self.pairs[pair][0]

    def tuned(self, pair: str) -> str:
        return self.pairs[pair][1]

    def clusters(self) -> dict[str, str]:
        """Every fine-tune -> the model it descends from through the pairs (its base, or
        its base's base): a base and its fine-tunes share weights, so the conjecture counts
        them as one model."""
        base_of = {tuned: base for base, tuned in self.pairs.values()}
        roots = {}
        for tuned in base_of:
            root, seen = tuned, set()
            while root in base_of and root not in seen:
                seen.add(root)
                root = base_of[root]
            roots[tuned] = root
        return roots

    def layers(self, pair: str) -> list[int]:
        """Every layer of the base model: each is one attention_diff job."""
        return list(range(self.models.layout(self.base(pair)).n_layers))

    def diff_mb(self, pair: str, layer: int, chunk_mb: int) -> int:
        """Memory of one diff job: the chunk, a few sub-blocks of its widest row, the layout."""
        layout = self.models.layout(self.base(pair))
        widest = max(
            (
                layout.logical[r.name].shape[-1]
                for r in layout.roles.values()
                if r.layer == layer and len(layout.logical[r.name].shape) >= 2
            ),
            default=1,
        )
        return 512 + chunk_mb + math.ceil(16 * 4 * widest / MB)
