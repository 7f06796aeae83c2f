from moetopo.artefacts import read_columns, write_json, write_table
from moetopo.stages import log, run
from moetopo.stages.inventory import merge_inventory


def main(snakemake):
    frames = [read_columns(path) for path in snakemake.input]
    inventory, summary, layout = merge_inventory(
        snakemake.params.path,
        frames,
        family=snakemake.params.family or None,
        include_embeddings=snakemake.params.include_embeddings,
    )
    for warning in layout.warnings:
        log.warning("%s", warning)
    params = {"include_embeddings": snakemake.params.include_embeddings}
    write_table(
        inventory,
        snakemake.output.inventory,
        "inventory",
        params=params,
        warnings=layout.warnings,
        extra={"shards": summary["shards"]},
    )
    write_json(summary, snakemake.output.summary)
    log.info(
        "%s: %s, %d MoE layers of %d, %d experts, top-%d",
        snakemake.wildcards.model,
        layout.family,
        len(layout.moe_layers),
        layout.n_layers,
        layout.n_experts,
        layout.top_k,
    )


run(snakemake, main)  # noqa: F821
