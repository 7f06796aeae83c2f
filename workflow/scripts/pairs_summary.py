from moetopo.artefacts import read_table, write_table
from moetopo.stages import run
from moetopo.stages.pairs_summary import PairTables, pairs_summary


def main(snakemake):
    params = snakemake.params
    pairs = [
        PairTables(pair, read_table(attention)[0], read_table(scaffold)[0])
        for pair, attention, scaffold in zip(
            params.pairs, snakemake.input.attention, snakemake.input.scaffold, strict=True
        )
    ]
    summary = pairs_summary(
        pairs, params.depth_bins, params.confidence_level, params.n_resamples, params.seed
    )
    settings = {
        "depth_bins": params.depth_bins,
        "confidence_level": params.confidence_level,
        "n_resamples": params.n_resamples,
        "seed": params.seed,
    }
    write_table(
        summary,
        snakemake.output[0],
        "pairs_summary",
        params=settings,
        extra={"pairs": list(params.pairs)},
    )


run(snakemake, main)  # noqa: F821
