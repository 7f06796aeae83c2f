from moetopo.artefacts import read_table, write_table
from moetopo.model import open_model
from moetopo.snake import run
from moetopo.stages.cohomology import CohomologySettings, layer_cohomology, summary_rows
from moetopo.stages.gates import LazyGates
from moetopo.topology.layer import TopologyParams

SORT = {
    "persistence": ["layer", "source", "dim", "birth", "death"],
    "sheaf": ["layer", "source", "quantile"],
    "hodge": ["layer", "source", "quantile"],
    "hodge_edges": ["layer", "source", "quantile", "rank"],
    "hodgecover": ["layer", "method", "keep", "expert"],
    "layer_summary": ["layer", "source", "metric"],
}


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
        chunk_bytes=int(p.chunk_mb) << 20,
    )
    model = (
        open_model(p.path, p.family, inventory=snakemake.input.inventory)
        if settings.reads_expert_weights
        else None
    )
    tables = {
        name: read_table(path)[0]
        for name, path in snakemake.input.items()
        if name not in ("inventory", "gates")
    }
    result = layer_cohomology(
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
    frames = {
        "persistence": result.persistence,
        "sheaf": result.sheaf,
        "hodge": result.hodge,
        "hodge_edges": result.critical_edges,
        "hodgecover": result.hodgecover,
        "layer_summary": summary_rows(layer, result.summary),
    }
    settings_meta = {**vars(params), **vars(settings)}
    for name, frame in frames.items():
        write_table(frame, snakemake.output[name], name, sort_by=SORT[name], params=settings_meta)


run(snakemake, main)  # noqa: F821
