rule cohomology:
    input:
        inventory="results/{model}/inventory.parquet",
        distances="results/{model}/geometry/{layer}.parquet",
        coactivation="results/{model}/coactivation.parquet",
        routing="results/{model}/routing.parquet",
        gates="results/{model}/gates.parquet",
        clusters="results/{model}/clusters.parquet",
        captured=get_captured,
    output:
        **{
            name: f"results/{{model}}/cohomology/{{layer}}/{name}.parquet"
            for name in TOPOLOGY_ARTEFACTS
        },
    log:
        "logs/{model}/cohomology/{layer}.log",
    group:
        "cohomology"
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=get_cohomology_mb,
        runtime=get_cohomology_runtime,
        chunk_mb=CHUNK_MB,
    params:
        **config["cohomology"],
        path=get_model_path,
        family=lambda wc: SHEET.family(wc.model),
        function_tokens=config["probe"]["function_tokens"],
        seed=config["probe"]["seed"],
    script:
        "../scripts/cohomology.py"


rule gather_cohomology:
    input:
        **{name: get_layer_cohomology(name) for name in TOPOLOGY_ARTEFACTS},
    output:
        **{name: f"results/{{model}}/{name}.parquet" for name in TOPOLOGY_ARTEFACTS},
    log:
        "logs/{model}/gather_cohomology.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    script:
        "../scripts/gather.py"
