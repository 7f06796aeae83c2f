rule gates:
    input:
        inventory="results/{model}/inventory.parquet",
        summary="results/{model}/model.json",
    output:
        "results/{model}/gates.parquet",
    log:
        "logs/{model}/gates.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc: 512 + 3 * get_router_mb(wc),
        runtime=lambda wc: runtime_minutes(get_router_mb(wc)),
    params:
        path=get_model_path,
    script:
        "../scripts/gates.py"
