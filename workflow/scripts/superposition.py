from moetopo.artefacts import read_table, write_table
from moetopo.artefacts.reopen import reopen_model
from moetopo.artefacts.views import LazyGates
from moetopo.geometry.superposition import Thresholds
from moetopo.stages import log, run
from moetopo.stages.superposition import superposition_tables


def main(snakemake):
    params = snakemake.params
    model = reopen_model(params.path, params.family, snakemake.input.inventory)
    gates = LazyGates(snakemake.input.gates, model.layout.moe_layers)
    routing, _ = read_table(snakemake.input.routing)
    basis_file = snakemake.input.get("basis")
    thresholds = Thresholds(params.ignored_norm, params.dedicated_score, params.antipodal_cosine)
    result = superposition_tables(model, gates, routing, params.basis, basis_file, thresholds)
    for warning in result.warnings:
        log.warning("%s", warning)
    experts, features = result.tables()
    settings = {
        "basis": params.basis,
        "basis_file": basis_file,
        "ignored_norm": params.ignored_norm,
        "dedicated_score": params.dedicated_score,
        "antipodal_cosine": params.antipodal_cosine,
    }
    for table, path, artefact in (
        (experts, snakemake.output.superposition, "superposition"),
        (features, snakemake.output.features, "superposition_features"),
    ):
        write_table(table, path, artefact, params=settings, warnings=result.warnings)


run(snakemake, main)  # noqa: F821
