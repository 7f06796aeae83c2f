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


def get_final_outputs():
    return expand("results/{model}/gates.parquet", model=SHEET.names)
