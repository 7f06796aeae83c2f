from moetopo.artefacts import read_table, write_table
from moetopo.artefacts.reopen import reopen_model
from moetopo.artefacts.views import LazyGates
from moetopo.stages import captured_file, run
from moetopo.stages.cohomology import CohomologySettings, layer_cohomology


def main(snakemake):
    p = snakemake.params
    layer = int(snakemake.wildcards.layer)
    chunk_bytes = int(snakemake.resources.chunk_mb) << 20
    params, settings = CohomologySettings.split(dict(p.items()), chunk_bytes)
    model = (
        reopen_model(p.path, p.family, snakemake.input.inventory)
        if settings.reads_expert_weights
        else None
    )
    tables = {
        name: read_table(path)[0]
        for name, path in snakemake.input.items()
        if name not in ("inventory", "gates", "captured")
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
        captured=captured_file(snakemake.input),
    )
    settings_meta = {**vars(params), **vars(settings)}
    for name, frame in frames.items():
        write_table(frame, snakemake.output[name], name, params=settings_meta)


run(snakemake, main)  # noqa: F821
