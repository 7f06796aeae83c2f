from moetopo.artefacts import read_table, write_table
from moetopo.stages import run
from moetopo.stages.compression_summary import INPUTS, compression_summary


def main(snakemake):
    p = snakemake.params
    models = {
        name: {table: read_table(snakemake.input[table][i])[0] for table in INPUTS}
        for i, name in enumerate(p.models)
    }
    settings = {k: p[k] for k in ("source", "threshold_spec", "confidence_level", "n_resamples")}
    settings |= {"keep_fractions": list(p.keep_fractions), "seed": p.seed}
    tables = compression_summary(models, clusters=dict(p.clusters), **settings)
    for name, table in tables.items():
        write_table(table, snakemake.output[name], name, params=settings)


run(snakemake, main)  # noqa: F821
