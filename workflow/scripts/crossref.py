from moetopo.artefacts import read_table, write_table
from moetopo.stages import log, run
from moetopo.stages.crossref import crossref_table


def main(snakemake):
    params = snakemake.params
    scaffold, meta = read_table(snakemake.input.scaffold)
    moe_diff, _ = read_table(snakemake.input.moe_diff)
    redundancy, _ = read_table(snakemake.input.redundancy)
    pair = meta["pair"]
    table, warnings = crossref_table(
        scaffold,
        moe_diff,
        redundancy,
        pair["moe_layers"],
        params.source,
        params.threshold_spec,
        params.min_redundancy,
    )
    for warning in warnings:
        log.warning("%s", warning)
    settings = {
        "source": params.source,
        "threshold_spec": params.threshold_spec,
        "min_redundancy": params.min_redundancy,
    }
    write_table(
        table,
        snakemake.output[0],
        "crossref",
        params=settings,
        warnings=warnings,
        extra={"pair": pair},
    )


run(snakemake, main)  # noqa: F821
