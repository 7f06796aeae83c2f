from moetopo.artefacts import read_table, write_table
from moetopo.artefacts.reopen import reopen_model
from moetopo.artefacts.views import load_gates
from moetopo.geometry.distances import pairs_table
from moetopo.stages import captured_file, log, run
from moetopo.stages.expert_geometry import layer_distances


def main(snakemake):
    params = snakemake.params
    layer = int(snakemake.wildcards.layer)
    model = reopen_model(params.path, params.family, snakemake.input.inventory)
    gates = load_gates(snakemake.input.gates, [layer])
    coactivation, _ = read_table(snakemake.input.coactivation)
    matrices, warnings, inputs = layer_distances(
        model,
        layer,
        list(params.sources),
        gates,
        coactivation,
        function_tokens=params.function_tokens,
        seed=params.seed,
        chunk_bytes=int(snakemake.resources.chunk_mb) << 20,
        captured=captured_file(snakemake.input),
    )
    for warning in warnings:
        log.warning("%s", warning)
    settings = {
        "sources": list(params.sources),
        "function_tokens": params.function_tokens,
        "seed": params.seed,
        "chunk_mb": snakemake.resources.chunk_mb,
    }
    write_table(
        pairs_table(layer, matrices, inputs),
        snakemake.output[0],
        "expert_distances",
        params=settings,
        warnings=warnings,
    )


run(snakemake, main)  # noqa: F821
