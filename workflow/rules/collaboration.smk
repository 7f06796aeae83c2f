rule collaboration:
    input:
        unpack(get_collaboration_inputs),
    output:
        **{
            name: f"results/{{model}}/{name}.parquet"
            for name in COLLABORATION_ARTEFACTS
        },
    log:
        "logs/{model}/collaboration.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc: 1024 + 4 * get_router_mb(wc),
        runtime=lambda wc: runtime_minutes(4 * get_router_mb(wc), base=10),
    params:
        **config["collaboration"],
        path=get_model_path,
        family=lambda wc: SHEET.family(wc.model),
    script:
        "../scripts/collaboration.py"
