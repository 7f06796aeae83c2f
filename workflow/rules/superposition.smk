rule superposition:
    input:
        unpack(get_superposition_inputs),
    output:
        superposition="results/{model}/superposition.parquet",
        features="results/{model}/superposition_features.parquet",
    log:
        "logs/{model}/superposition.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=get_superposition_mb,
        runtime=get_superposition_runtime,
    params:
        basis=config["superposition"]["basis"],
        ignored_norm=config["superposition"]["ignored_norm"],
        dedicated_score=config["superposition"]["dedicated_score"],
        antipodal_cosine=config["superposition"]["antipodal_cosine"],
        path=get_model_path,
        family=lambda wc: SHEET.family(wc.model),
    script:
        "../scripts/superposition.py"
