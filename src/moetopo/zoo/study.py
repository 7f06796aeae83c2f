"""The designed study: does H1 per activated parameter predict generalization?

The demo zoo cannot answer it (scores follow training budget and size, its top-1 models
have no coactivation H1 by construction, 4 to 16 experts rarely carry H1 at all). This
study varies one factor at a time around a base point, each over at least three values,
with several seeds per configuration, so every comparison holds everything else fixed:

- number of experts, top-k, expert width: the architecture;
- training steps: the budget (the only factor that changes the tokens seen);
- load-balancing coefficient and data mixture (code share): the recipe.

Every model trains on a code-heavy mixture (the base point: 3 code rows in 4), so the
prose held-out loss is an out-of-domain score beside the held-out loss (the mean over
domains, the zoo's score) and the train/held-out gap. One family (OLMoE: a router per
layer, no shared expert, the family's own auxiliary loss), so the family is not a factor.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from moetopo.zoo.specs import ModelSpec

BASE = ModelSpec(
    id="study-base",
    family="olmoe",
    experts=32,
    top_k=2,
    hidden=48,
    layers=2,
    expert_inter=32,
    steps=400,
    seed=0,
    heads=4,
    kv_heads=2,
    batch=16,
    seq_len=96,
    extra={"router_aux_loss_coef": 0.01},
)
BASE_CODE_SHARE = 0.75
# factor -> the values tried (the base point's value among them)
FACTORS: dict[str, tuple[Any, ...]] = {
    "experts": (32, 40, 48, 64),
    "top_k": (1, 2, 4),
    "expert_inter": (16, 32, 64),
    "steps": (200, 400, 800),
    "aux_loss_coef": (0.0, 0.01, 0.1),
    "code_share": (0.5, 0.75, 1.0),
}
SEEDS = (0, 1, 2)
OOD_DOMAIN = "prose"  # the minority domain of every mixture, absent at code share 1


@dataclass(frozen=True)
class StudyPoint:
    """One study model: its spec, the factor it varies (``base`` for the base point), the
    value, and the training mixture as the cycle of domains a batch's rows follow."""

    spec: ModelSpec
    factor: str
    value: Any
    configuration: str
    mixture: tuple[str, ...]

    @property
    def design(self) -> dict[str, Any]:
        """The model's value of every factor (the sheet carries a column per factor)."""
        return {factor: factor_value(self.spec, factor) for factor in FACTORS} | {
            "code_share": self.mixture.count("code") / len(self.mixture)
        }


def mixture(code_share: float) -> tuple[str, ...]:
    """Rows of a batch cycle through this: code_share 0.75 -> code, code, code, prose."""
    quarters = round(4 * code_share)
    if not 0 <= quarters <= 4 or abs(quarters / 4 - code_share) > 1e-9:
        raise ValueError(f"code share {code_share} is not a multiple of 1/4")
    return ("code",) * quarters + ("prose",) * (4 - quarters)


def _spec_at(base: ModelSpec, factor: str, value: Any) -> tuple[ModelSpec, float]:
    """The base point with ``factor`` set to ``value``, and its code share."""
    if factor == "code_share":
        return base, value
    if factor == "aux_loss_coef":
        return replace(base, extra=base.extra | {"router_aux_loss_coef": value}), BASE_CODE_SHARE
    return replace(base, **{factor: value}), BASE_CODE_SHARE


def factor_value(spec: ModelSpec, factor: str) -> Any:
    """A spec's value of ``factor`` (the code share is the mixture's, not the spec's: the
    base point's here)."""
    if factor == "code_share":
        return BASE_CODE_SHARE
    if factor == "aux_loss_coef":
        return spec.extra["router_aux_loss_coef"]
    return getattr(spec, factor)


def study_points(
    factors: dict[str, tuple[Any, ...]] = FACTORS,
    seeds: tuple[int, ...] = SEEDS,
    base: ModelSpec = BASE,
) -> list[StudyPoint]:
    """The base point and each factor's other values, every configuration at every seed
    (``base``: the base point's architecture; a tiny one in tests)."""
    configurations = [("base", None, base, BASE_CODE_SHARE)]
    for factor, values in factors.items():
        at_base = factor_value(base, factor)
        if at_base not in values:
            raise ValueError(f"{factor}: the base point's {at_base} is not among {values}")
        for value in values:
            if value != at_base:
                configurations.append((factor, value, *_spec_at(base, factor, value)))
    points = []
    for factor, value, spec, share in configurations:
        name = "base" if factor == "base" else f"{factor.replace('_', '')}{value:g}"
        for seed in seeds:
            points.append(
                StudyPoint(
                    spec=replace(spec, id=f"study-{name}-s{seed}", seed=seed),
                    factor=factor,
                    value=value,
                    configuration=name,
                    mixture=mixture(share),
                )
            )
    return points
