"""What the config schema cannot say: sources one section names that another must compute,
and which part of the config changes results (the report records that part only).
"""

from __future__ import annotations

from moetopo.errors import MoetopoError

# Sections that bound memory or job size and change no result: never a rule's params.
ENGINEERING_SECTIONS = ("streaming",)


def check_config(config: dict) -> None:
    """Refuse a source that a section reads but geometry does not compute (the schema has
    already refused names that are no source at all)."""
    computed = list(config["geometry"]["sources"])
    named = [
        ("cohomology.hodge_signal", [config["cohomology"]["hodge_signal"]]),
        ("crossref.source", [config["crossref"]["source"]]),
        ("conjecture.primary_source", [config["conjecture"]["primary_source"]]),
        ("conjecture.sources", list(config["conjecture"]["sources"])),
        ("clusters.absolute", list(config["clusters"]["absolute"])),
    ]
    for key, sources in named:
        missing = [s for s in sources if s not in computed]
        if missing:
            raise MoetopoError(
                f"config: {key} names {', '.join(missing)}, which geometry.sources does not "
                f"compute ({', '.join(computed)}); add it there or choose one of those"
            )
    conjecture = config["conjecture"]
    tested = list(conjecture["sources"])
    if tested and conjecture["primary_source"] not in tested:
        raise MoetopoError(
            f"config: conjecture.primary_source {conjecture['primary_source']} is not among "
            f"conjecture.sources ({', '.join(tested)}), so the primary test would not run"
        )
    scores = ["score", *conjecture["other_scores"]]
    if conjecture["primary_score"] not in scores:
        raise MoetopoError(
            f"config: conjecture.primary_score {conjecture['primary_score']} is neither score "
            f"nor one of conjecture.other_scores ({', '.join(scores[1:]) or 'none'})"
        )
    statistic = conjecture["primary_statistic"]
    if conjecture["primary_level"] == "layer" and (
        statistic.startswith("partial_") or statistic == "regression"
    ):
        raise MoetopoError(
            f"config: conjecture.primary_statistic {conjecture['primary_statistic']} has no "
            "layer-level test; choose pearson or spearman, or primary_level: model"
        )


def result_params(config: dict) -> dict:
    """The config without its engineering sections: what a result depends on."""
    return {k: v for k, v in config.items() if k not in ENGINEERING_SECTIONS}
