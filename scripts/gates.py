from moetopo.artefacts import stream_table
from moetopo.model import open_model
from moetopo.snake import log, run
from moetopo.stages.gates import gate_batches


def main(snakemake):
    model = open_model(
        snakemake.params.path, snakemake.params.family, inventory=snakemake.input.inventory
    )
    with stream_table(snakemake.output[0], "gates") as out:
        for batch in gate_batches(model, out.warnings):
            out.write(batch)
    for warning in out.warnings:
        log.warning("%s", warning)


run(snakemake, main)  # noqa: F821
