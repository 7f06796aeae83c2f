rule conjecture:
    input:
        summaries=expand("results/{model}/model.json", model=SHEET.names),
        layer_summaries=expand(
            "results/{model}/layer_summary.parquet", model=SHEET.names
        ),
    output:
        models="results/stats/models.parquet",
        layers="results/stats/layers.parquet",
        conjecture="results/stats/conjecture.parquet",
    log:
        "logs/stats/conjecture.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=30,
    params:
        **config["conjecture"],
        models=SHEET.names,
        scores={
            column: [SHEET.score(m, column) for m in SHEET.names]
            for column in get_score_directions()
        },
        steps=[SHEET.steps(m) for m in SHEET.names],
        directions=get_score_directions(),
        clusters=PAIRS.clusters(),
    script:
        "../scripts/conjecture.py"


rule study:
    input:
        models="results/stats/models.parquet",
    output:
        **{
            artefact: f"results/stats/{artefact}.parquet"
            for artefact in STUDY_ARTEFACTS
        },
    log:
        "logs/stats/study.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=30,
    params:
        design=SHEET.design(),
        scores=get_score_directions(),
        metric=config["conjecture"]["primary_metric"],
        source=config["conjecture"]["primary_source"],
        confidence_level=config["conjecture"]["confidence_level"],
        n_resamples=config["conjecture"]["n_resamples"],
        seed=config["conjecture"]["seed"],
        min_models=config["conjecture"]["min_models"],
    script:
        "../scripts/study.py"
