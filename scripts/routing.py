from moetopo.artefacts import write_table
from moetopo.model import open_model
from moetopo.snake import log, run
from moetopo.stages.gates import LazyGates
from moetopo.stages.routing import routing_tables


def main(snakemake):
    params = snakemake.params
    model = open_model(params.path, params.family, inventory=snakemake.input.inventory)
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
        sort_by=["layer", "expert"],
        params=settings,
        warnings=result.warnings,
    )
    write_table(
        coactivation, snakemake.output.coactivation, "coactivation", sort_by=["layer", "i", "j"]
    )
    write_table(agreement, snakemake.output.agreement, "routing_agreement", sort_by=["layer"])


run(snakemake, main)  # noqa: F821
