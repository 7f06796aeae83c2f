from pathlib import Path

from moetopo.artefacts import read_table, write_table
from moetopo.end_to_end import evaluate_end_to_end
from moetopo.stages import run
from moetopo.stages.compression_end_to_end import end_to_end_table


def main(snakemake):
    p = snakemake.params
    text = Path(snakemake.input.text[0]).read_text("utf-8") if snakemake.input.text else None
    table = end_to_end_table(
        p.path,
        read_table(snakemake.input.compression)[0],
        read_table(snakemake.input.selections)[0],
        model=snakemake.wildcards.model,
        windows=int(p.windows),
        evaluate=evaluate_end_to_end,
        text=text,
    )
    data = sorted(set(table.data) - {""})
    params = {"windows": int(p.windows), "data": data}
    write_table(table, snakemake.output[0], "compression_end_to_end", params=params)


run(snakemake, main)  # noqa: F821
