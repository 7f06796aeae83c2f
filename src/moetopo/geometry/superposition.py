"""How one expert packs the features of a basis into its hidden space.

Feature i of a basis F [n, H] (unit rows: a feature is a direction) lands in expert e at
W_i = F_i Win_e^T, a row of W = F Win_e^T [n, m], where Win_e [m, H] stacks the
expert's input projections (for the toy model W is the stored matrix itself). From W, as
in Elhage et al.'s toy models of superposition and the MoE study that follows them:

- dimensions per feature D* = m / ||W||_F^2 (in units of the weights' own scale: only
  models whose represented features have norm about 1, as toy models do, give it a
  meaning across models);
- the dimensionality of feature i, D_i = ||W_i||^2 / sum_j (Ŵ_i . W_j)^2, in [0, 1]: 1
  when no other feature shares its direction, 1/2 for each of an antipodal pair;
- its superposition score, sum over the other represented features j of (Ŵ_i . Ŵ_j)^2,
  with both vectors unit (the reference code mixes a unit and a raw vector here, which
  makes the score depend on the other features' norms);
- its class: ignored (norm below a fraction of the expert's largest feature norm),
  antipodal (one represented partner at cosine <= the antipodal threshold and no other
  interference above the dedicated threshold), dedicated (score <= that threshold), or
  superimposed.

Everything is computed from rows of the Gram matrix W W^T, a block of features at a
time, so memory follows the block, not n^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("ignored", "dedicated", "antipodal", "superimposed")
_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class Thresholds:
    """Where the classes of a feature begin (config ``superposition``)."""

    ignored_norm: float = 0.5  # fraction of the expert's largest feature norm
    dedicated_score: float = 0.1  # superposition score at or below which a feature is alone
    antipodal_cosine: float = -0.9  # cosine at or below which two features are antipodal


@dataclass(frozen=True)
class ExpertFeatures:
    """Per feature of one expert (arrays of length n), and the expert's totals."""

    norm: np.ndarray
    dimensionality: np.ndarray
    score: np.ndarray  # NaN where the feature has no direction in this expert (norm 0)
    kind: np.ndarray  # one of CLASSES per feature
    hidden: int
    frobenius_sq: float

    @property
    def dims_per_feature(self) -> float:
        """D* = m / ||W||_F^2 (NaN for an expert that reads none of the features)."""
        return self.hidden / self.frobenius_sq if self.frobenius_sq else np.nan

    def counts(self) -> dict[str, int]:
        return {c: int(np.count_nonzero(self.kind == c)) for c in CLASSES}

    def summary(self) -> dict[str, float | int]:
        """The expert's row: D*, mean D_i, class counts, monosemanticity (the dedicated
        share of the features it represents) and its represented features' mean score."""
        counts = self.counts()
        represented = len(self.kind) - counts["ignored"]
        scores = self.score[self.kind != "ignored"]
        return {
            "n_features": len(self.kind),
            "hidden": self.hidden,
            "frobenius_sq": self.frobenius_sq,
            "dims_per_feature": self.dims_per_feature,
            "mean_dimensionality": float(self.dimensionality.mean()),
            "mean_score": float(scores.mean()) if represented else np.nan,
            **{f"n_{c}": counts[c] for c in CLASSES},
            "monosemanticity": counts["dedicated"] / represented if represented else np.nan,
        }


def expert_features(
    embedded: np.ndarray, thresholds: Thresholds | None = None, block_bytes: int = _BLOCK_BYTES
) -> ExpertFeatures:
    """The measures of every feature from its image ``embedded`` = W [n, m] in one expert."""
    thresholds = thresholds or Thresholds()
    w = np.asarray(embedded, dtype=np.float64)
    n, m = w.shape
    norm = np.sqrt(np.einsum("ij,ij->i", w, w))
    largest = norm.max(initial=0.0)
    represented = (norm > 0) & (norm >= thresholds.ignored_norm * largest)
    unit = w / np.where(norm > 0, norm, 1.0)[:, None]
    own = np.flatnonzero(represented)
    unit_represented = unit[own]
    dimensionality = np.zeros(n)
    score = np.full(n, np.nan)
    kind = np.full(n, "ignored", dtype=object)
    step = max(1, block_bytes // (8 * max(n, 1)))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        gram = w[rows] @ w.T  # W_i . W_j for the block's features i, every j
        with np.errstate(invalid="ignore", divide="ignore"):
            dimensionality[rows] = np.where(
                norm[rows] > 0, norm[rows] ** 4 / np.einsum("ij,ij->i", gram, gram), 0.0
            )
        cosine = unit[rows] @ unit_represented.T
        cosine[np.arange(rows.start, rows.stop)[:, None] == own] = 0.0  # not with itself
        score[rows] = np.where(norm[rows] > 0, (cosine**2).sum(axis=1), np.nan)
        kind[rows] = _classify(score[rows], cosine, represented[rows], thresholds)
    return ExpertFeatures(norm, dimensionality, score, kind, m, float(norm @ norm))


def _classify(score, cosine, represented, thresholds: Thresholds) -> np.ndarray:
    """Class of each feature of a block, from its score and its cosines to the expert's
    represented features (its own entry zeroed)."""
    closest = cosine.min(axis=1, initial=0.0)
    alone_but_partner = score - closest**2 <= thresholds.dedicated_score
    antipodal = (closest <= thresholds.antipodal_cosine) & alone_but_partner
    kind = np.where(score <= thresholds.dedicated_score, "dedicated", "superimposed")
    kind = np.where(antipodal, "antipodal", kind)
    return np.where(represented, kind, "ignored").astype(object)


def usage_weights(load: np.ndarray) -> np.ndarray:
    """Each expert's share of the routed tokens (uniform when no load is known)."""
    load = np.nan_to_num(np.asarray(load, dtype=np.float64))
    total = load.sum()
    return load / total if total > 0 else np.full(len(load), 1.0 / max(len(load), 1))


def layer_aggregates(experts: list[ExpertFeatures], weights: np.ndarray) -> dict[str, object]:
    """Usage-weighted figures of a layer: per feature the global dimensionality
    sum_e w_e D_i^(e) and the routed share of experts that dedicate it a dimension (or
    represent it at all); for the layer, the mean global D_i, the dimensions per feature
    a routed token meets, sum_e w_e D*_e, and the monosemanticity,
    sum_e w_e dedicated_e / sum_e w_e represented_e."""
    dims = np.stack([e.dimensionality for e in experts])
    per_feature = np.array([e.dims_per_feature for e in experts])
    known = np.isfinite(per_feature) & (weights > 0)
    kinds = np.stack([e.kind for e in experts])
    dedicated = (kinds == "dedicated").astype(float)
    represented = (kinds != "ignored").astype(float)
    weighted_represented = weights @ represented.sum(axis=1)
    return {
        "global_dimensionality": weights @ dims,
        "dedicated_weight": weights @ dedicated,
        "represented_weight": weights @ represented,
        "experts": {c: (kinds == c).sum(axis=0) for c in CLASSES},
        "max_norm": np.stack([e.norm for e in experts]).max(axis=0),
        "layer_dimensionality": float((weights @ dims).mean()),
        "layer_dims_per_feature": (
            float(weights[known] @ per_feature[known] / weights[known].sum())
            if known.any()
            else np.nan
        ),
        "layer_monosemanticity": (
            float(weights @ dedicated.sum(axis=1) / weighted_represented)
            if weighted_represented > 0
            else np.nan
        ),
    }
