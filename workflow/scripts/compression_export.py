from moetopo.artefacts import read_table, write_json
from moetopo.stages import run
from moetopo.stages.compression_end_to_end import chosen_selection


def main(snakemake):
    p = snakemake.params
    chosen = chosen_selection(
        read_table(snakemake.input.compression)[0],
        read_table(snakemake.input.selections)[0],
        p.method,
        float(p.fraction),
        snakemake.wildcards.model,
    )
    write_json(chosen, snakemake.output[0])


run(snakemake, main)  # noqa: F821
