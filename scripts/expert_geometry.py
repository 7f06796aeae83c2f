from moetopo.artefacts import read_table, write_table
from moetopo.geometry import pairs_table
from moetopo.model import open_model
from moetopo.snake import log, run
from moetopo.stages.gates import load_gates
from moetopo.stages.geometry import layer_distances


def main(snakemake):
    params = snakemake.params
    layer = int(snakemake.wildcards.layer)
    model = open_model(params.path, params.family, inventory=snakemake.input.inventory)
    gates = load_gates(snakemake.input.gates, [layer])
    coactivation, _ = read_table(snakemake.input.coactivation)
    matrices, warnings = layer_distances(
        model,
        layer,
        list(params.sources),
        gates,
        coactivation,
        function_tokens=params.function_tokens,
        seed=params.seed,
        chunk_bytes=int(params.chunk_mb) << 20,
    )
    for warning in warnings:
        log.warning("%s", warning)
    settings = {
        "sources": list(params.sources),
        "function_tokens": params.function_tokens,
        "seed": params.seed,
        "chunk_mb": params.chunk_mb,
    }
    write_table(
        pairs_table(layer, matrices),
        snakemake.output[0],
        "expert_distances",
        sort_by=["layer", "source", "i", "j"],
        params=settings,
        warnings=warnings,
    )


run(snakemake, main)  # noqa: F821
