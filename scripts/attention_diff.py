from moetopo.artefacts import write_table
from moetopo.model import open_model
from moetopo.rowdiff import RowMeasure
from moetopo.snake import log, run
from moetopo.stages.attention_diff import check_pair, diff_layers


def main(snakemake):
    params = snakemake.params
    base = open_model(params.base_path, params.base_family, inventory=snakemake.input.base)
    tuned = open_model(params.tuned_path, params.tuned_family, inventory=snakemake.input.tuned)
    pair = check_pair(base, tuned, (params.base, params.tuned))
    layers = list(params.layers)
    measure = RowMeasure(params.measure, float(params.threshold), params.threshold_kind)
    chunk_bytes = int(params.chunk_mb) << 20
    diff = diff_layers(base, tuned, layers, measure, chunk_bytes, snakemake.threads)
    warnings = pair.warnings() + diff.warnings
    for warning in warnings:
        log.warning("%s", warning)
    settings = {
        "measure": params.measure,
        "threshold": params.threshold,
        "threshold_kind": params.threshold_kind,
        "chunk_mb": params.chunk_mb,
    }
    extra = {"pair": pair.metadata(layers, diff.not_compared)}
    for frame, path, kind, order in (
        (diff.attention, snakemake.output.attention, "attention_diff", ["layer", "projection"]),
        (diff.moe, snakemake.output.moe, "moe_diff", ["layer", "kind", "expert"]),
    ):
        write_table(
            frame, path, kind, sort_by=order, params=settings, warnings=warnings, extra=extra
        )


run(snakemake, main)  # noqa: F821
