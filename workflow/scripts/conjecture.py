import json
from pathlib import Path

import pandas as pd

from moetopo.artefacts import read_table, write_table
from moetopo.stages import run
from moetopo.stages.conjecture import conjecture_rows_by_score, model_tables


def main(snakemake):
    p = snakemake.params
    names = list(p.models)
    summaries = {
        n: json.loads(Path(f).read_text())
        for n, f in zip(names, snakemake.input.summaries, strict=True)
    }
    layer_summaries = {
        n: read_table(f)[0] for n, f in zip(names, snakemake.input.layer_summaries, strict=True)
    }

    def number(text):
        return float(text) if text != "" else float("nan")

    def tables(column):
        rows = [
            {"model": n, "score": number(s), "steps": number(t)}
            for n, s, t in zip(names, p.scores[column], p.steps, strict=True)
        ]
        return model_tables(rows, summaries, layer_summaries)

    by_score = {column: (*tables(column), p.directions[column]) for column in p.scores}
    models, layers, _ = by_score[p.primary_score]
    primary = {
        "metric": p.primary_metric,
        "source": p.primary_source,
        "statistic": p.primary_statistic,
        "level": p.primary_level,
    }
    settings = {
        "higher_is_better": p.higher_is_better,
        "confidence_level": p.confidence_level,
        "n_resamples": p.n_resamples,
        "seed": p.seed,
        "min_models": p.min_models,
        "sources": list(p.sources),
        "primary": primary,
        "clusters": dict(p.clusters),
        "covariates": list(p.covariates),
        "other_scores": dict(p.other_scores),
        "primary_score": p.primary_score,
        "directions": dict(p.directions),
        "scores": {c: dict(zip(names, v, strict=True)) for c, v in p.scores.items()},
        "steps": dict(zip(names, p.steps, strict=True)),
    }
    table = conjecture_rows_by_score(
        by_score,
        primary_score=p.primary_score,
        confidence_level=p.confidence_level,
        n_resamples=p.n_resamples,
        seed=p.seed,
        min_models=p.min_models,
        sources=list(p.sources) or None,
        primary=primary,
        clusters=dict(p.clusters),
        covariates=list(p.covariates),
    )
    write_table(
        models,
        snakemake.output.models,
        "stats_models",
        params=settings,
    )
    write_table(
        layers,
        snakemake.output.layers,
        "stats_layers",
        params=settings,
    )
    write_table(
        pd.DataFrame(table),
        snakemake.output.conjecture,
        "conjecture",
        params=settings,
    )


run(snakemake, main)  # noqa: F821
