from moetopo.artefacts import read_table, write_table
from moetopo.stages import run
from moetopo.stages.study import design_rows, study_tables


def main(snakemake):
    p = snakemake.params
    keys = ("scores", "metric", "source", "confidence_level", "n_resamples", "seed")
    settings = {k: getattr(p, k) for k in (*keys, "min_models")}
    seeds, points, effects = study_tables(
        read_table(snakemake.input.models)[0],
        design_rows(dict(p.design)),
        dict(p.scores),
        metric=p.metric,
        source=p.source,
        confidence_level=p.confidence_level,
        n_resamples=p.n_resamples,
        seed=p.seed,
        min_models=p.min_models,
    )
    write_table(seeds, snakemake.output.study_seeds, "study_seeds", params=settings)
    write_table(points, snakemake.output.study_models, "study_models", params=settings)
    write_table(effects, snakemake.output.study_effects, "study_effects", params=settings)


run(snakemake, main)  # noqa: F821
