from moetopo.artefacts import write_table
from moetopo.stages import run
from moetopo.stages.inventory_shard import shard_rows


def main(snakemake):
    rows, meta = shard_rows(snakemake.params.path, snakemake.wildcards.shard)
    write_table(rows, snakemake.output[0], "shard_header", extra=meta)


run(snakemake, main)  # noqa: F821
