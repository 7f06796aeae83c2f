"""Concatenate per-layer artefacts of one kind into the per-model artefact."""

from moetopo.artefacts import gather_tables
from moetopo.snake import run


def main(snakemake):
    gather_tables(list(snakemake.input), snakemake.output[0])


run(snakemake, main)  # noqa: F821
