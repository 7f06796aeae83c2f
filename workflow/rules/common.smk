import pandas as pd
from snakemake.utils import validate

from moetopo.workflow import ModelSheet

validate(config, schema="../../config/schema/config.schema.yaml")

models = pd.read_csv(config["models"], sep="\t", dtype=str, comment="#").fillna("")
validate(models, schema="../../config/schema/models.schema.yaml")
models = models.set_index("model", drop=False)

SHEET = ModelSheet(models, workdir=workflow.basedir)


wildcard_constraints:
    model="[A-Za-z0-9_.-]+",
    shard="[^/]+",
    layer="[0-9]+",


def get_model_path(wildcards):
    return SHEET.path(wildcards.model)


def get_shard_file(wildcards):
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


def get_layer_geometry(wildcards):
    return expand(
        "results/{model}/geometry/{layer}.parquet",
        model=wildcards.model,
        layer=SHEET.moe_layers(wildcards.model),
    )


WEIGHT_SOURCES = {"weight_l2", "weight_cosine", "function"}


def reads_expert_weights():
    return bool(WEIGHT_SOURCES & set(config["geometry"]["sources"]))


def get_geometry_threads(wildcards):
    return 2 if reads_expert_weights() else 1


def get_geometry_mb(wildcards):
    base = 512 + 4 * get_router_mb(wildcards)
    if not reads_expert_weights():
        return base
    expert = SHEET.expert_mb(wildcards.model, int(wildcards.layer))
    return base + 3 * config["geometry"]["chunk_mb"] + 8 * expert


def get_final_outputs():
    return expand(
        "results/{model}/{artefact}.parquet",
        model=SHEET.names,
        artefact=["routing", "clusters", "redundancy"],
    )
