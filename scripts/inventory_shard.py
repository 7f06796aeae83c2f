from moetopo.artefacts import write_table
from moetopo.snake import run
from moetopo.stages.inventory import shard_rows


def main(snakemake):
    rows, meta = shard_rows(snakemake.input[0])
    write_table(rows, snakemake.output[0], "shard_header", sort_by=["offset_begin"], extra=meta)


run(snakemake, main)  # noqa: F821
