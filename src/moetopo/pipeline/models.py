"""models.tsv for the Snakefile: model paths, shard lists, MoE layers, sizes.

Every header of every model is parsed at parse time (header bytes only), which gives
the DAG its per-shard and per-layer jobs without checkpoint rules.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from moetopo.checkpoint.captured import captured_shapes, check_layers
from moetopo.checkpoint.layout import ModelLayout, build_layout
from moetopo.checkpoint.remote import is_remote
from moetopo.checkpoint.shards import ShardList, list_shards, open_checkpoint
from moetopo.errors import MoetopoError
from moetopo.stats.design import DESIGN_COLUMNS

MB = 1 << 20
# results/<name>/ of these holds other artefacts than a model's
RESERVED = {"pairs", "stats", "report"}


def read_sheet(path: str | Path) -> pd.DataFrame:
    """A tab-separated sheet read literally: no comment character (a ``#`` in a path is
    part of the path), no values taken for missing ("NA" is a name), every cell a string."""
    try:
        return pd.read_csv(path, sep="\t", dtype=str, comment=None, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise MoetopoError(
            f"sheet {path}: cannot be read as tab-separated columns ({exc})"
        ) from exc


class ModelSheet:
    """models.tsv with lazily parsed checkpoints."""

    def __init__(self, table: pd.DataFrame, sheet: str | Path = "models.tsv"):
        names = table["model"]
        twice = sorted(set(names[names.duplicated()]))
        if twice:
            raise MoetopoError(f"model sheet {sheet}: model {twice[0]!r} is listed twice")
        clash = sorted(set(names) & RESERVED)
        if clash:
            raise MoetopoError(
                f"model sheet {sheet}: model name {clash[0]!r} is reserved "
                f"(results/{clash[0]}/ holds other artefacts); rename it"
            )
        self.table = table.set_index("model", drop=False)
        self._layouts: dict[str, ModelLayout] = {}
        self._listings: dict[str, ShardList] = {}

    @cached_property
    def names(self) -> list[str]:
        return list(self.table.index)

    def path(self, model: str) -> str:
        """The model's location: a normalised local path, or a remote one as written."""
        path = self.table.loc[model, "path"]
        return path if is_remote(path) else str(Path(path))

    def is_remote(self, model: str) -> bool:
        return is_remote(self.path(model))

    def family(self, model: str) -> str:
        return self.table.loc[model].get("family", "")

    def score(self, model: str, column: str = "score") -> str:
        return self.table.loc[model].get(column, "")

    def design(self) -> dict[str, list[str]] | None:
        """A designed study's sheet (configuration, factor, seed and a column per factor):
        every column but the paths and the family, for the study stage; else None."""
        if not set(DESIGN_COLUMNS) <= set(self.table.columns):
            return None
        kept = [c for c in self.table.columns if c not in ("path", "routing", "basis", "family")]
        return {c: self.table[c].tolist() for c in kept}

    def check_score_columns(self, columns: list[str]) -> None:
        """Every configured score column exists and holds numbers (or nothing, for a model
        without that score): a typo stops the run at parse time, not in the stats job."""
        for column in columns:
            if column == "score":
                continue  # the models schema checks it
            if column not in self.table.columns:
                raise MoetopoError(
                    f"model sheet: conjecture.other_scores names column {column!r}, which the "
                    f"sheet does not have (columns: {', '.join(self.table.columns)})"
                )
            for model, text in self.table[column].items():
                try:
                    float(text) if text != "" else None
                except ValueError:
                    raise MoetopoError(
                        f"model sheet, model {model!r}: {column} is {text!r}, not a number"
                    ) from None

    def steps(self, model: str) -> str:
        return self.table.loc[model].get("steps", "")

    def routing_file(self, model: str) -> str:
        return self.table.loc[model].get("routing", "")

    def basis_file(self, model: str) -> str:
        """The feature basis file the superposition stage reads, or "" for the data-free one."""
        return self.table.loc[model].get("basis", "")

    def check_routing_files(self) -> None:
        """Every captured-logits file against its model's layers, from the files' headers:
        a bad file stops the run at parse time, before any job has written anything."""
        for model in self.names:
            path = self.routing_file(model)
            if not path:
                continue
            try:
                shapes = captured_shapes(path)
                layout = self.layout(model)
                experts = {m: layout.layers[m].n_experts for m in layout.moe_layers}
                check_layers(shapes, experts, path)
            except MoetopoError as exc:
                raise MoetopoError(f"model sheet, model {model!r}: {exc}") from exc

    def shards(self, model: str) -> list[str]:
        return list(self.listing(model).shards)

    def shard_path(self, model: str, shard: str) -> str:
        return str(self.listing(model).root / shard)

    def listing(self, model: str) -> ShardList:
        """The model's shards, read from its index once per parse (163 shard jobs ask)."""
        if model not in self._listings:
            self._listings[model] = list_shards(self.path(model))
        return self._listings[model]

    def layout(self, model: str) -> ModelLayout:
        if model not in self._layouts:
            checkpoint = open_checkpoint(self.path(model))
            self._layouts[model] = build_layout(checkpoint, family=self.family(model) or None)
        return self._layouts[model]

    def moe_layers(self, model: str) -> list[int]:
        return self.layout(model).moe_layers

    def expert_mb(self, model: str, layer: int) -> int:
        """Float32 size of one expert of ``layer``, in MiB (what a job holds per expert)."""
        moe = self.layout(model).layers[layer]
        per_expert = sum(int(np.prod(t.shape)) for t in moe.experts.values())
        return 1 + per_expert * 4 // MB

    def layer_mb(self, model: str, layer: int) -> int:
        """Bytes on disk of the routed experts of ``layer``, in MiB (what weight sources read)."""
        layout = self.layout(model)
        moe = layout.layers[layer]
        names = {n for t in moe.experts.values() for n in (t.names or (t.fused,))}
        return 1 + sum(layout.logical[n].nbytes for n in names) // MB

    def router_mb(self, model: str) -> int:
        layout = self.layout(model)
        routers = (layout.logical[m.router] for m in layout.layers.values())
        return 1 + sum(t.numel for t in routers) * 4 // MB
