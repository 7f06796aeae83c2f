rule report:
    input:
        unpack(get_report_inputs),
    output:
        html=report(
            "results/report/index.html",
            caption="../report/index.rst",
            category="1. Report",
        ),
        markdown="results/report/report.md",
        tables=report(
            directory("results/report/tables"),
            patterns=["{table}.tsv"],
            caption="../report/tables.rst",
            category="2. Tables",
            labels={"table": "{table}"},
        ),
        conjecture=report(
            directory("results/report/figures/conjecture"),
            patterns=["{figure}.png"],
            caption="../report/conjecture.rst",
            category="3. Conjecture",
            labels={"figure": "{figure}"},
        ),
        redundancy=report(
            directory("results/report/figures/redundancy"),
            patterns=["{model}.png"],
            caption="../report/redundancy.rst",
            category="4. Models",
            subcategory="Redundancy",
            labels={"model": "{model}", "figure": "redundancy"},
        ),
        distances=report(
            directory("results/report/figures/distances"),
            patterns=["{model}.png"],
            caption="../report/distances.rst",
            category="4. Models",
            subcategory="Distances",
            labels={"model": "{model}", "figure": "distances"},
        ),
        persistence=report(
            directory("results/report/figures/persistence"),
            patterns=["{model}.png"],
            caption="../report/persistence.rst",
            category="4. Models",
            subcategory="Persistence",
            labels={"model": "{model}", "figure": "persistence"},
        ),
        scales=report(
            directory("results/report/figures/scales"),
            patterns=["{model}.png"],
            caption="../report/scales.rst",
            category="4. Models",
            subcategory="Scales",
            labels={"model": "{model}", "figure": "scales"},
        ),
        hodge=report(
            directory("results/report/figures/hodge"),
            patterns=["{model}.png"],
            caption="../report/hodge.rst",
            category="4. Models",
            subcategory="Hodge",
            labels={"model": "{model}", "figure": "hodge"},
        ),
        sheaf=report(
            directory("results/report/figures/sheaf"),
            patterns=["{model}.png"],
            caption="../report/sheaf.rst",
            category="4. Models",
            subcategory="Sheaf",
            labels={"model": "{model}", "figure": "sheaf"},
        ),
        scaffold=report(
            directory("results/report/figures/scaffold"),
            patterns=["{pair}.png"],
            caption="../report/scaffold.rst",
            category="5. Fine-tunes",
            subcategory="Scaffold map",
            labels={"pair": "{pair}", "figure": "scaffold"},
        ),
        compression=report(
            directory("results/report/figures/compression"),
            patterns=["{figure}.png"],
            caption="../report/compression.rst",
            category="6. Compression",
            labels={"figure": "{figure}"},
        ),
        study=report(
            directory("results/report/figures/study"),
            patterns=["{figure}.png"],
            caption="../report/study.rst",
            category="3. Conjecture",
            subcategory="Designed study",
            labels={"figure": "{figure}"},
        ),
        change=report(
            directory("results/report/figures/change"),
            patterns=["{pair}.png"],
            caption="../report/change.rst",
            category="5. Fine-tunes",
            subcategory="Router and experts",
            labels={"pair": "{pair}", "figure": "change"},
        ),
    log:
        "logs/report.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=get_report_mb,
        runtime=15 + len(SHEET.names) // 10,
    params:
        models=SHEET.names,
        paths=[SHEET.path(m) for m in SHEET.names],
        bases=[PAIRS.base(p) for p in PAIRS.ids],
        tuned=[PAIRS.tuned(p) for p in PAIRS.ids],
        config=result_params(config),
        optional=get_report_optional(),
    script:
        "../scripts/report.py"
