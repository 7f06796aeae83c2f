rule routing:
    input:
        unpack(get_routing_inputs),
    output:
        routing="results/{model}/routing.parquet",
        coactivation="results/{model}/coactivation.parquet",
        agreement="results/{model}/routing_agreement.parquet",
    log:
        "logs/{model}/routing.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc: 1024 + 4 * get_router_mb(wc),
        runtime=lambda wc: runtime_minutes(4 * get_router_mb(wc), base=10),
    params:
        path=get_model_path,
        family=lambda wc: SHEET.family(wc.model),
        probe_tokens=config["probe"]["routing_tokens"],
        seed=config["probe"]["seed"],
    script:
        "../scripts/routing.py"
