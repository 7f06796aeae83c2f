rule compression:
    input:
        inventory="results/{model}/inventory.parquet",
        hodgecover="results/{model}/cohomology/{layer}/hodgecover.parquet",
        captured=get_captured,
    output:
        **{
            name: f"results/{{model}}/compression/{{layer}}/{name}.parquet"
            for name in COMPRESSION_ARTEFACTS
        },
    log:
        "logs/{model}/compression/{layer}.log",
    group:
        "compression"
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=get_compression_mb,
        runtime=get_compression_runtime,
        chunk_mb=CHUNK_MB,
    params:
        **config["compression"],
        path=get_model_path,
        family=lambda wc: SHEET.family(wc.model),
    script:
        "../scripts/compression.py"


rule gather_compression:
    input:
        **{name: get_layer_compression(name) for name in COMPRESSION_ARTEFACTS},
    output:
        **{name: f"results/{{model}}/{name}.parquet" for name in COMPRESSION_ARTEFACTS},
    log:
        "logs/{model}/gather_compression.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    script:
        "../scripts/gather.py"


rule compression_summary:
    input:
        **{
            table: expand(f"results/{{model}}/{table}.parquet", model=SHEET.names)
            for table in COMPRESSION_SUMMARY_INPUTS
        },
    output:
        **{
            name: f"results/stats/{name}.parquet"
            for name in COMPRESSION_SUMMARY_ARTEFACTS
        },
    log:
        "logs/compression_summary.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=15,
    params:
        models=SHEET.names,
        clusters=PAIRS.clusters(),
        source=config["cohomology"]["hodge_signal"],
        threshold_spec=config["report"]["threshold_spec"],
        keep_fractions=config["compression"]["keep_fractions"],
        confidence_level=config["conjecture"]["confidence_level"],
        n_resamples=config["conjecture"]["n_resamples"],
        seed=config["conjecture"]["seed"],
    script:
        "../scripts/compression_summary.py"
