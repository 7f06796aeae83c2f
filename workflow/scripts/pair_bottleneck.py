from moetopo.artefacts import read_table, write_table
from moetopo.stages import run
from moetopo.stages.pair_bottleneck import bottleneck_rows


def main(snakemake):
    base, _ = read_table(snakemake.input.base)
    tuned, _ = read_table(snakemake.input.tuned)
    write_table(
        bottleneck_rows(base, tuned),
        snakemake.output[0],
        "bottleneck",
    )


run(snakemake, main)  # noqa: F821
