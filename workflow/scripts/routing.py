from moetopo.artefacts import write_table
from moetopo.artefacts.reopen import reopen_model
from moetopo.artefacts.views import LazyGates
from moetopo.stages import log, run
from moetopo.stages.routing import routing_tables


def main(snakemake):
    params = snakemake.params
    model = reopen_model(params.path, params.family, snakemake.input.inventory)
    gates = LazyGates(snakemake.input.gates, model.layout.moe_layers)
    captured = snakemake.input.get("captured")
    result = routing_tables(model, gates, params.probe_tokens, params.seed, captured)
    routing, coactivation, agreement = result.tables()
    for warning in result.warnings:
        log.warning("%s", warning)
    settings = {"probe_tokens": params.probe_tokens, "seed": params.seed, "captured": captured}
    write_table(
        routing,
        snakemake.output.routing,
        "routing",
        params=settings,
        warnings=result.warnings,
    )
    write_table(
        coactivation,
        snakemake.output.coactivation,
        "coactivation",
    )
    write_table(
        agreement,
        snakemake.output.agreement,
        "routing_agreement",
    )


run(snakemake, main)  # noqa: F821
