import json
from pathlib import Path

from moetopo.artefacts import stream_table
from moetopo.stages import log, run
from moetopo.stages.gates import Routers, gate_batches


def main(snakemake):
    summary = json.loads(Path(snakemake.input.summary).read_text())
    routers = Routers.from_inventory(snakemake.params.path, snakemake.input.inventory, summary)
    with stream_table(snakemake.output[0], "gates") as out:
        for batch in gate_batches(routers, out.warnings):
            out.write(batch)
    for warning in out.warnings:
        log.warning("%s", warning)


run(snakemake, main)  # noqa: F821
