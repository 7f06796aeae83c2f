"""The end-to-end compression stage: each selection the layer-wise stage chose, applied in
every MoE layer at once, scored by the whole model's held-out loss and KL to the full
model (transformers, where the model can be run), and the export of one selection."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moetopo.artefacts import SORT_KEYS, columns
from moetopo.compression.export import selection_json
from moetopo.errors import MoetopoError


def can_run_models() -> bool:
    """Whether torch and transformers (the zoo extra) are installed."""
    return all(importlib.util.find_spec(name) for name in ("torch", "transformers"))


def budgets_by_fraction(compression: pd.DataFrame) -> dict[float, int | None]:
    """Configured fraction -> the budget every MoE layer kept at it (None where layers of
    different sizes kept different counts: one config cannot hold such a pruned model)."""
    keeps = compression.groupby("fraction").keep.unique()
    return {float(f): int(k[0]) if len(k) == 1 else None for f, k in keeps.items()}


def chosen_selection(
    compression: pd.DataFrame, selections: pd.DataFrame, method: str, fraction: float, model: str
) -> dict:
    """The selection JSON of ``method`` (its first draw) at ``fraction``."""
    keep = budgets_by_fraction(compression).get(float(fraction))
    if keep is None:
        raise MoetopoError(
            f"{model}: no common budget at keep fraction {fraction:g} (configured: "
            f"{sorted(budgets_by_fraction(compression))}, or layers kept different counts)"
        )
    return selection_json(selections, method=method, keep=keep, draw=0, model=model)


def end_to_end_table(
    model_dir: str | Path,
    compression: pd.DataFrame,
    selections: pd.DataFrame,
    *,
    model: str,
    windows: int,
    evaluate: Callable[..., Any],
    text: str | None = None,
) -> pd.DataFrame:
    """Per configured fraction, method and draw: the reduced model's held-out loss, the
    full model's on the same tokens, KL(full || reduced), or why it was not measured.

    ``evaluate``: :func:`moetopo.end_to_end.evaluate_end_to_end`, passed in because it runs
    the model (torch, a tool) and stages sit below the tools."""
    rows = []
    combos = compression[["fraction", "method", "draw"]].drop_duplicates()
    budgets = budgets_by_fraction(compression)
    for fraction, method, draw in combos.itertuples(index=False):
        row = {"fraction": fraction, "method": method, "draw": draw, "keep": budgets[fraction]}
        try:
            if budgets[fraction] is None:
                raise MoetopoError("layers of different sizes kept different counts")
            chosen = selection_json(
                selections, method=method, keep=budgets[fraction], draw=draw, model=model
            )
            result = evaluate(model_dir, chosen, text=text, windows=windows)
            row |= {
                "loss": result.loss,
                "full_loss": result.full_loss,
                "kl": result.kl,
                "tokens": result.tokens,
                "data": result.data,
                "note": "",
            }
        except MoetopoError as exc:  # a selection no single config can hold
            row |= {"loss": np.nan, "full_loss": np.nan, "kl": np.nan, "tokens": 0}
            row |= {"data": "", "note": str(exc)}
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns("compression_end_to_end"))
    table["keep"] = table.keep.astype("Int64")
    return table.sort_values(SORT_KEYS["compression_end_to_end"], kind="stable").reset_index(
        drop=True
    )
