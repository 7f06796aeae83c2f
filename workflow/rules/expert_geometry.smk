rule expert_geometry:
    input:
        inventory="results/{model}/inventory.parquet",
        gates="results/{model}/gates.parquet",
        coactivation="results/{model}/coactivation.parquet",
        captured=get_captured,
    output:
        "results/{model}/geometry/{layer}.parquet",
    log:
        "logs/{model}/geometry/{layer}.log",
    group:
        "geometry"
    conda:
        "../envs/moetopo.yaml"
    threads: get_geometry_threads
    resources:
        mem_mb=get_geometry_mb,
        runtime=get_geometry_runtime,
        chunk_mb=CHUNK_MB,
    params:
        path=get_model_path,
        family=lambda wc: SHEET.family(wc.model),
        sources=config["geometry"]["sources"],
        function_tokens=config["probe"]["function_tokens"],
        seed=config["probe"]["seed"],
    script:
        "../scripts/expert_geometry.py"


rule gather_distances:
    input:
        get_layer_geometry,
    output:
        "results/{model}/expert_distances.parquet",
    log:
        "logs/{model}/gather_distances.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    script:
        "../scripts/gather.py"
