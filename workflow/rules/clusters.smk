rule clusters:
    input:
        "results/{model}/expert_distances.parquet",
    output:
        clusters="results/{model}/clusters.parquet",
        redundancy="results/{model}/redundancy.parquet",
    log:
        "logs/{model}/clusters.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=15,
    params:
        thresholds=config["clusters"]["thresholds"],
        absolute=config["clusters"]["absolute"],
        linkage=config["clusters"]["linkage"],
    script:
        "../scripts/clusters.py"
