"""Concatenate one pair's per-group attention and MoE diffs."""

from moetopo.snake import run
from moetopo.stages.attention_diff import gather_pair


def main(snakemake):
    gather_pair(list(snakemake.input.attention), snakemake.output.attention)
    gather_pair(list(snakemake.input.moe), snakemake.output.moe)


run(snakemake, main)  # noqa: F821
