from moetopo.artefacts import read_table, write_table
from moetopo.stages import run
from moetopo.stages.clusters import cluster_tables


def main(snakemake):
    params = snakemake.params
    distances, _ = read_table(snakemake.input[0])
    clusters, redundancy = cluster_tables(
        distances, list(params.thresholds), dict(params.absolute), params.linkage
    )
    settings = {
        "thresholds": list(params.thresholds),
        "absolute": dict(params.absolute),
        "linkage": params.linkage,
    }
    write_table(
        clusters,
        snakemake.output.clusters,
        "clusters",
        params=settings,
    )
    write_table(
        redundancy,
        snakemake.output.redundancy,
        "redundancy",
        params=settings,
    )


run(snakemake, main)  # noqa: F821
