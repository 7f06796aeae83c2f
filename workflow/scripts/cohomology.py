from moetopo.artefacts import read_table, write_table
from moetopo.artefacts.reopen import reopen_model
from moetopo.artefacts.views import LazyGates
from moetopo.stages import run
from moetopo.stages.cohomology import CohomologySettings, layer_cohomology
from moetopo.topology.layer import TopologyParams


def main(snakemake):
    p = snakemake.params
    layer = int(snakemake.wildcards.layer)
    params = TopologyParams(
        maxdim=p.maxdim,
        noise_floor=p.noise_floor,
        noise_floor_mode=p.noise_floor_mode,
        epsilon_quantiles=tuple(p.epsilon_quantiles),
        stalk_dim=p.stalk_dim,
        rtol=p.rtol,
        n_eigenvalues=p.n_eigenvalues,
        hodge_signal=p.hodge_signal,
        n_critical_edges=p.n_critical_edges,
        max_triangles=p.max_triangles,
        keep_fractions=tuple(p.keep_fractions),
    )
    settings = CohomologySettings(
        sheaf_stalks=p.sheaf_stalks,
        sheaf_rows=p.sheaf_rows,
        groups_threshold=p.groups_threshold,
        merge_barriers=p.merge_barriers,
        function_tokens=p.function_tokens,
        seed=p.seed,
        chunk_bytes=int(snakemake.resources.chunk_mb) << 20,
    )
    model = (
        reopen_model(p.path, p.family, snakemake.input.inventory)
        if settings.reads_expert_weights
        else None
    )
    tables = {
        name: read_table(path)[0]
        for name, path in snakemake.input.items()
        if name not in ("inventory", "gates")
    }
    frames = layer_cohomology(
        model,
        layer,
        tables["distances"],
        coactivation=tables["coactivation"],
        routing=tables["routing"],
        gates=LazyGates(snakemake.input.gates, [layer]),  # read only for router stalks
        clusters=tables["clusters"],
        params=params,
        settings=settings,
    )
    settings_meta = {**vars(params), **vars(settings)}
    for name, frame in frames.items():
        write_table(frame, snakemake.output[name], name, params=settings_meta)


run(snakemake, main)  # noqa: F821
