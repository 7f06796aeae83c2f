rule inventory_shard:
    input:
        get_shard_file,
    output:
        "results/{model}/inventory/{shard}.parquet",
    log:
        "logs/{model}/inventory/{shard}.log",
    group:
        "shards"
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=512,
        runtime=5,
    params:
        path=get_model_path,
    script:
        "../scripts/inventory_shard.py"


rule inventory:
    input:
        get_shard_headers,
    output:
        inventory="results/{model}/inventory.parquet",
        summary="results/{model}/model.json",
    log:
        "logs/{model}/inventory.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=15,
    params:
        path=get_model_path,
        family=lambda wc: SHEET.family(wc.model),
        include_embeddings=config["inventory"]["include_embeddings"],
    script:
        "../scripts/inventory.py"
