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
        **get_compression_layer_params(),
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


rule compression_end_to_end:
    input:
        inventory="results/{model}/inventory.parquet",
        compression="results/{model}/compression.parquet",
        selections="results/{model}/compression_selections.parquet",
        text=get_eval_text,
    output:
        "results/{model}/compression_end_to_end.parquet",
    log:
        "logs/{model}/compression_end_to_end.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 2
    resources:
        mem_mb=get_end_to_end_mb,
        runtime=get_end_to_end_runtime,
    params:
        path=get_model_path,
        windows=config["compression"]["end_to_end_windows"],
    script:
        "../scripts/compression_end_to_end.py"


rule compression_export:
    input:
        compression="results/{model}/compression.parquet",
        selections="results/{model}/compression_selections.parquet",
    output:
        "results/{model}/compression_selection.json",
    log:
        "logs/{model}/compression_export.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    params:
        method=config["compression"]["export_method"],
        fraction=config["compression"]["export_fraction"],
    script:
        "../scripts/compression_export.py"
