from pathlib import Path

from moetopo.report.build import write_report
from moetopo.report.data import (
    COMPRESSION_STUDY,
    DESIGN_STUDY,
    MODEL_TABLES,
    OPTIONAL_MODEL_TABLES,
    PAIR_TABLES,
    load_report,
)
from moetopo.stages import run

STUDY = ("stats_models", "conjecture", "pairs_summary", *COMPRESSION_STUDY, *DESIGN_STUDY)


def main(snakemake):
    p, given = snakemake.params, snakemake.input
    model_keys = ("summary", *MODEL_TABLES)
    optional = {  # table -> {model: file}, for the models that have it
        t: dict(zip(p.optional[t], getattr(given, t), strict=True))
        for t in OPTIONAL_MODEL_TABLES
        if hasattr(given, t)
    }
    models = [
        (
            name,
            path,
            {k: getattr(given, k)[i] for k in model_keys}
            | {t: files[name] for t, files in optional.items() if name in files},
        )
        for i, (name, path) in enumerate(zip(p.models, p.paths, strict=True))
    ]
    pairs = [
        (base, tuned, {k: getattr(given, k)[i] for k in PAIR_TABLES})
        for i, (base, tuned) in enumerate(zip(p.bases, p.tuned, strict=True))
    ]
    study = {k: getattr(given, k) for k in STUDY if hasattr(given, k)}
    data = load_report(models, pairs, study, dict(p.config))
    write_report(data, Path(snakemake.output.html).parent)


run(snakemake, main)  # noqa: F821
