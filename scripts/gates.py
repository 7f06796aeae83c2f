from moetopo.artefacts import write_table
from moetopo.model import open_model
from moetopo.snake import log, run
from moetopo.stages.gates import gate_rows


def main(snakemake):
    model = open_model(snakemake.params.path, snakemake.params.family)
    rows, warnings = gate_rows(model)
    for warning in warnings:
        log.warning("%s", warning)
    write_table(
        rows, snakemake.output[0], "gates", sort_by=["layer", "expert"], warnings=warnings
    )


run(snakemake, main)  # noqa: F821
