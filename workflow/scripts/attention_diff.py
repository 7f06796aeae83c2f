from moetopo.artefacts import write_table
from moetopo.artefacts.reopen import reopen_model
from moetopo.diff.rows import RowMeasure
from moetopo.stages import log, run
from moetopo.stages.attention_diff import check_pair, diff_layers


def main(snakemake):
    params = snakemake.params
    base = reopen_model(params.base_path, params.base_family, snakemake.input.base)
    tuned = reopen_model(params.tuned_path, params.tuned_family, snakemake.input.tuned)
    pair = check_pair(base, tuned, (params.base, params.tuned))
    layers = [int(snakemake.wildcards.layer)]
    measure = RowMeasure(params.measure, float(params.threshold), params.threshold_kind)
    chunk_bytes = int(snakemake.resources.chunk_mb) << 20
    diff = diff_layers(base, tuned, layers, measure, chunk_bytes, snakemake.threads)
    warnings = pair.warnings() + diff.warnings
    for warning in warnings:
        log.warning("%s", warning)
    settings = {
        "measure": params.measure,
        "threshold": params.threshold,
        "threshold_kind": params.threshold_kind,
        "chunk_mb": snakemake.resources.chunk_mb,
    }
    extra = {"pair": pair.metadata(layers, diff.not_compared)}
    for frame, path, kind in (
        (diff.attention, snakemake.output.attention, "attention_diff"),
        (diff.moe, snakemake.output.moe, "moe_diff"),
    ):
        write_table(frame, path, kind, params=settings, warnings=warnings, extra=extra)


run(snakemake, main)  # noqa: F821
