from dataclasses import asdict

from moetopo.artefacts import read_table, write_table
from moetopo.artefacts.reopen import reopen_model
from moetopo.artefacts.views import LazyGates
from moetopo.stages import captured_file, log, run
from moetopo.stages.collaboration import CollaborationSettings, collaboration_tables


def main(snakemake):
    params, given = snakemake.params, snakemake.input
    settings = CollaborationSettings(
        sources=tuple(params.sources),
        router_temperature=params.router_temperature,
        neighbours=params.neighbours,
        permutations=params.permutations,
        seed=params.seed,
    )
    model = reopen_model(params.path, params.family, given.inventory)
    gates = LazyGates(given.gates, model.layout.moe_layers)
    captured = captured_file(given)
    result = collaboration_tables(
        model,
        gates,
        read_table(given.coactivation)[0],
        read_table(given.routing)[0],
        read_table(given.distances)[0],
        settings,
        captured,
    )
    for warning in result.warnings:
        log.warning("%s", warning)
    recorded = asdict(settings) | {"captured": captured}
    for name, table in result.tables().items():
        warnings = result.warnings if name == "collaboration" else ()  # said once
        write_table(table, snakemake.output[name], name, params=recorded, warnings=warnings)


run(snakemake, main)  # noqa: F821
