from moetopo.artefacts import read_table, write_table
from moetopo.stages import run
from moetopo.stages.scaffold import scaffold_table


def main(snakemake):
    params = snakemake.params
    attention, meta = read_table(snakemake.input[0])
    pair = meta["pair"]
    table = scaffold_table(attention, pair["n_layers"], params.q_min, params.o_min, params.k_max)
    settings = {"q_min": params.q_min, "o_min": params.o_min, "k_max": params.k_max}
    write_table(
        table,
        snakemake.output[0],
        "scaffold",
        params=settings,
        extra={"pair": pair},
    )


run(snakemake, main)  # noqa: F821
