from moetopo.artefacts import read_table, write_table
from moetopo.artefacts.reopen import reopen_model
from moetopo.stages import captured_file, run
from moetopo.stages.compression import compression_params, layer_compression


def main(snakemake):
    p = snakemake.params
    params = compression_params(dict(p.items()))
    model = reopen_model(p.path, p.family, snakemake.input.inventory)
    tables = layer_compression(
        model,
        int(snakemake.wildcards.layer),
        params,
        captured=captured_file(snakemake.input),
        hodgecover=read_table(snakemake.input.hodgecover)[0],
        chunk_bytes=int(snakemake.resources.chunk_mb) << 20,
    )
    for name, table in tables.items():
        write_table(table, snakemake.output[name], name, params=vars(params))


run(snakemake, main)  # noqa: F821
