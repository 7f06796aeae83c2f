"""Concatenate per-layer artefacts into one: each named output gathers the inputs of the
same name (or, unnamed, all inputs into the one output)."""

from moetopo.artefacts import gather_tables
from moetopo.stages import run


def main(snakemake):
    names = list(snakemake.output.keys())
    if not names:
        gather_tables(list(snakemake.input), snakemake.output[0])
    for name in names:
        gather_tables(list(snakemake.input[name]), snakemake.output[name])


run(snakemake, main)  # noqa: F821
