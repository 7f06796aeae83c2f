from pathlib import Path

from snakemake.utils import validate

from moetopo.artefacts import (
    COLLABORATION_ARTEFACTS,
    COMPRESSION_ARTEFACTS,
    COMPRESSION_SUMMARY_ARTEFACTS,
    STUDY_ARTEFACTS,
    SUPERPOSITION_ARTEFACTS,
    TOPOLOGY_ARTEFACTS,
)
from moetopo.end_to_end import transformers_loads, zoo_entry
from moetopo.compression.evaluate import LAYER_KEYS as COMPRESSION_LAYER_KEYS
from moetopo.stages.compression_end_to_end import can_run_models
from moetopo.stages.compression_summary import INPUTS as COMPRESSION_SUMMARY_INPUTS
from moetopo.geometry.sources import (
    EXPERT_WEIGHT_SOURCES,
    cohomology_reads_expert_weights,
)
from moetopo.pipeline.config import check_config, result_params
from moetopo.pipeline.pairs import PairSheet
from moetopo.pipeline.models import ModelSheet, read_sheet

validate(config, schema="../schemas/config.schema.yaml")
check_config(config)

models = read_sheet(config["models"])
validate(models, schema="../schemas/models.schema.yaml")
SHEET = ModelSheet(models, config["models"])
SHEET.check_routing_files()
SHEET.check_score_columns(["score", *config["conjecture"]["other_scores"]])
# Bytes a streaming job holds at once: a resource, not a param, so changing it re-runs
# nothing (it changes no result).
CHUNK_MB = config["streaming"]["chunk_mb"]


wildcard_constraints:
    model="[A-Za-z0-9_][A-Za-z0-9_.-]*",
    shard="[^/]+",
    layer="[0-9]+",


def get_model_path(wildcards):
    return SHEET.path(wildcards.model)


def get_shard_file(wildcards):
    """A local shard is the job's input; a remote one's mirror is not (fetching ranges into
    it changes its time stamp, which must not re-run the jobs that read it)."""
    if SHEET.is_remote(wildcards.model):
        return []
    return SHEET.shard_path(wildcards.model, wildcards.shard)


def get_shard_headers(wildcards):
    return expand(
        "results/{model}/inventory/{shard}.parquet",
        model=wildcards.model,
        shard=SHEET.shards(wildcards.model),
    )


def get_router_mb(wildcards):
    return SHEET.router_mb(wildcards.model)


def get_routing_inputs(wildcards):
    inputs = {
        "inventory": f"results/{wildcards.model}/inventory.parquet",
        "gates": f"results/{wildcards.model}/gates.parquet",
    }
    if SHEET.routing_file(wildcards.model):
        inputs["captured"] = SHEET.routing_file(wildcards.model)
    return inputs


def get_captured(wildcards):
    """The sheet's captured routing file (its router inputs feed the function distance
    and merge barriers), or nothing."""
    path = SHEET.routing_file(wildcards.model)
    return [path] if path else []


def get_layer_geometry(wildcards):
    return expand(
        "results/{model}/geometry/{layer}.parquet",
        model=wildcards.model,
        layer=SHEET.moe_layers(wildcards.model),
    )


def get_layer_cohomology(name):
    def inputs(wildcards):
        return expand(
            "results/{model}/cohomology/{layer}/{name}.parquet",
            model=wildcards.model,
            layer=SHEET.moe_layers(wildcards.model),
            name=name,
        )

    return inputs


def compression_enabled():
    """The compression stage runs when it has methods to evaluate (a router-only config
    empties them: it reads no expert weights)."""
    return bool(config["compression"]["methods"])


def get_layer_compression(name):
    def inputs(wildcards):
        return expand(
            "results/{model}/compression/{layer}/{name}.parquet",
            model=wildcards.model,
            layer=SHEET.moe_layers(wildcards.model),
            name=name,
        )

    return inputs


def get_compression_layer_params():
    """The keys that change a layer's evaluation (not the end-to-end or export ones)."""
    return {k: config["compression"][k] for k in COMPRESSION_LAYER_KEYS}


def end_to_end_models():
    """Models scored end to end: torch and transformers installed, held-out text known
    (the zoo's own, or compression.eval_text), small enough for a CPU, and on local disk
    (transformers would download a remote model whole)."""
    settings = config["compression"]
    if not (compression_enabled() and settings["end_to_end"] and can_run_models()):
        return []
    return [
        m
        for m in SHEET.names
        if not SHEET.is_remote(m)
        and (settings["eval_text"] or zoo_entry(Path(SHEET.path(m))))
        and transformers_loads(Path(SHEET.path(m)))
        and SHEET.layout(m).params["total_params"] <= settings["end_to_end_max_params"]
    ]


def get_eval_text(wildcards):
    text = config["compression"]["eval_text"]
    return [text] if text else []


def get_end_to_end_mb(wildcards):
    """The model twice in float32 (full and reduced tensors of the MoE layers) and logits."""
    return 2048 + 3 * SHEET.layout(wildcards.model).params["total_params"] * 4 // (
        1 << 20
    )


def get_end_to_end_runtime(wildcards):
    return runtime_minutes(
        SHEET.layout(wildcards.model).params["total_params"] * 4 >> 20, base=30
    )


def get_compression_mb(wildcards):
    """Expert cache and merges, plus the token-sized buffers: every expert's weighted output
    on the calibration half (top_k rows a token) and a few [tokens, hidden] outputs."""
    layout = SHEET.layout(wildcards.model)
    moe = layout.layers[int(wildcards.layer)]
    tokens = config["compression"]["tokens"]
    buffers = tokens * layout.hidden_size * 8 * (moe.top_k + 8) >> 20
    expert = SHEET.expert_mb(wildcards.model, int(wildcards.layer))
    return 1024 + 2 * CHUNK_MB + 8 * expert + buffers


def get_compression_runtime(wildcards):
    return runtime_minutes(
        4 * SHEET.layer_mb(wildcards.model, int(wildcards.layer)), base=20
    )


def get_cohomology_mb(wildcards):
    base = 1024 + 4 * get_router_mb(wildcards)
    if not cohomology_job_reads_expert_weights():
        return base
    expert = SHEET.expert_mb(wildcards.model, int(wildcards.layer))
    return base + 2 * CHUNK_MB + 8 * expert


def runtime_minutes(mb_touched, base=5):
    """Wall-time request: a fixed start-up allowance plus reading at a cautious 20 MB/s."""
    return int(base + mb_touched / 1200)


def get_geometry_runtime(wildcards):
    if not geometry_reads_expert_weights():
        return runtime_minutes(get_router_mb(wildcards), base=10)
    return runtime_minutes(
        3 * SHEET.layer_mb(wildcards.model, int(wildcards.layer)), base=15
    )


def get_cohomology_runtime(wildcards):
    if not cohomology_job_reads_expert_weights():
        return 15
    return runtime_minutes(
        4 * SHEET.layer_mb(wildcards.model, int(wildcards.layer)), base=20
    )


def geometry_reads_expert_weights():
    return bool(set(EXPERT_WEIGHT_SOURCES) & set(config["geometry"]["sources"]))


def cohomology_job_reads_expert_weights():
    cohomology = config["cohomology"]
    return cohomology_reads_expert_weights(
        cohomology["merge_barriers"], cohomology["sheaf_stalks"]
    )


def get_geometry_threads(wildcards):
    return 2 if geometry_reads_expert_weights() else 1


def get_geometry_mb(wildcards):
    base = 512 + 4 * get_router_mb(wildcards)
    if not geometry_reads_expert_weights():
        return base
    expert = SHEET.expert_mb(wildcards.model, int(wildcards.layer))
    return base + 3 * CHUNK_MB + 8 * expert


def superposition_enabled():
    """The superposition stage reads every expert's input projections: off for
    router-only runs."""
    return config["superposition"]["enabled"]


def get_superposition_inputs(wildcards):
    inputs = {
        "inventory": f"results/{wildcards.model}/inventory.parquet",
        "gates": f"results/{wildcards.model}/gates.parquet",
        "routing": f"results/{wildcards.model}/routing.parquet",
    }
    if SHEET.basis_file(wildcards.model):
        inputs["basis"] = SHEET.basis_file(wildcards.model)
    return inputs


def get_superposition_mb(wildcards):
    """One expert's input projections, its image of a data-free basis in float64 (at most
    twice the expert's float32 size; a basis file's own size comes on top) and two Gram
    blocks of 64 MiB."""
    model = wildcards.model
    expert = max(SHEET.expert_mb(model, l) for l in SHEET.moe_layers(model))
    return 1024 + 128 + 4 * expert


def get_superposition_runtime(wildcards):
    layers = SHEET.moe_layers(wildcards.model)
    return runtime_minutes(sum(SHEET.layer_mb(wildcards.model, l) for l in layers))


def get_final_outputs():
    return (
        expand(
            "results/{model}/{artefact}.parquet",
            model=SHEET.names,
            artefact=[
                "routing",
                "clusters",
                "redundancy",
                *TOPOLOGY_ARTEFACTS,
                *(SUPERPOSITION_ARTEFACTS if superposition_enabled() else ()),
            ],
        )
        + get_compression_outputs()
        + get_collaboration_outputs()
        + get_study_outputs()
        + ["results/stats/conjecture.parquet", "results/report/index.html"]
        + get_pair_outputs()
    )


def collaboration_enabled():
    """The collaboration stage runs when it has sources of S to build."""
    return bool(config["collaboration"]["sources"])


def get_collaboration_inputs(wildcards):
    model = wildcards.model
    inputs = {
        name: f"results/{model}/{name}.parquet"
        for name in ("inventory", "gates", "coactivation", "routing")
    }
    inputs["distances"] = f"results/{model}/expert_distances.parquet"
    if SHEET.routing_file(model):
        inputs["captured"] = SHEET.routing_file(model)
    return inputs


def get_collaboration_outputs():
    if not collaboration_enabled():
        return []
    return expand(
        "results/{model}/{artefact}.parquet",
        model=SHEET.names,
        artefact=COLLABORATION_ARTEFACTS,
    )


def get_study_outputs():
    """The designed study's analysis, where the model sheet carries a design."""
    if SHEET.design() is None:
        return []
    return expand("results/stats/{artefact}.parquet", artefact=STUDY_ARTEFACTS)


def get_score_directions():
    """Score column -> whether higher is better, for every score the conjecture tests."""
    conjecture = config["conjecture"]
    other = {c: d == "higher" for c, d in conjecture["other_scores"].items()}
    return {"score": conjecture["higher_is_better"]} | other


def get_compression_outputs():
    if not compression_enabled():
        return []
    return (
        expand(
            "results/{model}/{artefact}.parquet",
            model=SHEET.names,
            artefact=COMPRESSION_ARTEFACTS,
        )
        + expand(
            "results/stats/{artefact}.parquet", artefact=COMPRESSION_SUMMARY_ARTEFACTS
        )
        + expand("results/{model}/compression_selection.json", model=SHEET.names)
        + expand(
            "results/{model}/compression_end_to_end.parquet", model=end_to_end_models()
        )
    )


# Base/tuned pairs for the attention diff (pairs.smk).
pairs = read_sheet(config["pairs"])
validate(pairs, schema="../schemas/pairs.schema.yaml")
PAIRS = PairSheet(pairs, SHEET)


wildcard_constraints:
    pair="[A-Za-z0-9_][A-Za-z0-9_.-]*--[A-Za-z0-9_][A-Za-z0-9_.-]*",


def get_pair_inventories(wildcards):
    return {
        "base": f"results/{PAIRS.base(wildcards.pair)}/inventory.parquet",
        "tuned": f"results/{PAIRS.tuned(wildcards.pair)}/inventory.parquet",
    }


def get_pair_layers(table):
    def inputs(wildcards):
        return expand(
            "results/pairs/{pair}/{table}/{layer}.parquet",
            pair=wildcards.pair,
            table=table,
            layer=PAIRS.layers(wildcards.pair),
        )

    return inputs


def get_attention_diff_mb(wildcards):
    return PAIRS.diff_mb(wildcards.pair, int(wildcards.layer), CHUNK_MB)


def get_pair_outputs():
    if not PAIRS.ids:
        return []
    return expand(
        "results/pairs/{pair}/{artefact}.parquet",
        pair=PAIRS.ids,
        artefact=["attention_diff", "moe_diff", "scaffold", "crossref", "bottleneck"],
    ) + ["results/pairs/summary.parquet"]


# The report (report.smk): every artefact it shows, per model and pair in sheet order.
from moetopo.report.data import MODEL_TABLES, PAIR_TABLES


def get_report_inputs(wildcards):
    inputs = {"summary": expand("results/{model}/model.json", model=SHEET.names)}
    for table in MODEL_TABLES:
        inputs[table] = expand(f"results/{{model}}/{table}.parquet", model=SHEET.names)
    for table in PAIR_TABLES:
        inputs[table] = expand(
            f"results/pairs/{{pair}}/{table}.parquet", pair=PAIRS.ids
        )
    if compression_enabled():
        for table in COMPRESSION_ARTEFACTS:
            inputs[table] = expand(
                f"results/{{model}}/{table}.parquet", model=SHEET.names
            )
        for table in COMPRESSION_SUMMARY_ARTEFACTS:
            inputs[table] = f"results/stats/{table}.parquet"
        inputs["compression_end_to_end"] = expand(
            "results/{model}/compression_end_to_end.parquet", model=end_to_end_models()
        )
    if superposition_enabled():
        inputs["superposition"] = expand(
            "results/{model}/superposition.parquet", model=SHEET.names
        )
    for table in COLLABORATION_ARTEFACTS if collaboration_enabled() else ():
        inputs[table] = expand(f"results/{{model}}/{table}.parquet", model=SHEET.names)
    for table in STUDY_ARTEFACTS if SHEET.design() is not None else ():
        inputs[table] = f"results/stats/{table}.parquet"
    inputs["stats_models"] = "results/stats/models.parquet"
    inputs["conjecture"] = "results/stats/conjecture.parquet"
    if PAIRS.ids:
        inputs["pairs_summary"] = "results/pairs/summary.parquet"
    return inputs


def get_report_optional():
    """Per optional per-model table, the models (in order) whose file the report reads."""
    optional = {"superposition": SHEET.names} if superposition_enabled() else {}
    if collaboration_enabled():
        optional |= {table: SHEET.names for table in COLLABORATION_ARTEFACTS}
    if not compression_enabled():
        return optional
    return optional | {
        "compression": SHEET.names,
        "compression_end_to_end": end_to_end_models(),
    }


def get_report_mb(wildcards):
    """Expert distances dominate: every pair of every layer and source, ~64 bytes a row."""
    rows = 0
    for model in SHEET.names:
        layout = SHEET.layout(model)
        for layer in layout.moe_layers:
            n = layout.layers[layer].n_experts
            rows += n * (n - 1) // 2 * len(config["geometry"]["sources"])
    return 1024 + rows * 64 // (1 << 20)
