rule attention_diff:
    input:
        unpack(get_pair_inventories),
    output:
        attention="results/pairs/{pair}/attention_diff/{layer}.parquet",
        moe="results/pairs/{pair}/moe_diff/{layer}.parquet",
    log:
        "logs/pairs/{pair}/attention_diff/{layer}.log",
    group:
        "attention_diff"
    conda:
        "../envs/moetopo.yaml"
    threads: 2
    resources:
        mem_mb=get_attention_diff_mb,
        runtime=lambda wc: runtime_minutes(2 * get_attention_diff_mb(wc), base=10),
        chunk_mb=CHUNK_MB,
    params:
        base=lambda wc: PAIRS.base(wc.pair),
        tuned=lambda wc: PAIRS.tuned(wc.pair),
        base_path=lambda wc: SHEET.path(PAIRS.base(wc.pair)),
        tuned_path=lambda wc: SHEET.path(PAIRS.tuned(wc.pair)),
        base_family=lambda wc: SHEET.family(PAIRS.base(wc.pair)),
        tuned_family=lambda wc: SHEET.family(PAIRS.tuned(wc.pair)),
        measure=config["attention_diff"]["measure"],
        threshold=config["attention_diff"]["threshold"],
        threshold_kind=config["attention_diff"]["threshold_kind"],
    script:
        "../scripts/attention_diff.py"


rule gather_pair_diff:
    input:
        attention=get_pair_layers("attention_diff"),
        moe=get_pair_layers("moe_diff"),
    output:
        attention="results/pairs/{pair}/attention_diff.parquet",
        moe="results/pairs/{pair}/moe_diff.parquet",
    log:
        "logs/pairs/{pair}/gather_pair_diff.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    script:
        "../scripts/gather.py"


rule scaffold:
    input:
        "results/pairs/{pair}/attention_diff.parquet",
    output:
        "results/pairs/{pair}/scaffold.parquet",
    log:
        "logs/pairs/{pair}/scaffold.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=512,
        runtime=10,
    params:
        q_min=config["scaffold"]["q_min"],
        o_min=config["scaffold"]["o_min"],
        k_max=config["scaffold"]["k_max"],
    script:
        "../scripts/scaffold.py"


rule crossref:
    input:
        scaffold="results/pairs/{pair}/scaffold.parquet",
        moe_diff="results/pairs/{pair}/moe_diff.parquet",
        redundancy=lambda wc: f"results/{PAIRS.tuned(wc.pair)}/redundancy.parquet",
    output:
        "results/pairs/{pair}/crossref.parquet",
    log:
        "logs/pairs/{pair}/crossref.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=512,
        runtime=10,
    params:
        source=config["crossref"]["source"],
        threshold_spec=config["crossref"]["threshold_spec"],
        min_redundancy=config["crossref"]["min_redundancy"],
    script:
        "../scripts/crossref.py"


rule pairs_summary:
    input:
        attention=expand("results/pairs/{pair}/attention_diff.parquet", pair=PAIRS.ids),
        scaffold=expand("results/pairs/{pair}/scaffold.parquet", pair=PAIRS.ids),
    output:
        "results/pairs/summary.parquet",
    log:
        "logs/pairs/summary.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    params:
        pairs=PAIRS.ids,
        depth_bins=config["pairs_summary"]["depth_bins"],
        confidence_level=config["pairs_summary"]["confidence_level"],
        n_resamples=config["pairs_summary"]["n_resamples"],
        seed=config["pairs_summary"]["seed"],
    script:
        "../scripts/pairs_summary.py"


rule pair_bottleneck:
    input:
        base=lambda wc: f"results/{PAIRS.base(wc.pair)}/persistence.parquet",
        tuned=lambda wc: f"results/{PAIRS.tuned(wc.pair)}/persistence.parquet",
    output:
        "results/pairs/{pair}/bottleneck.parquet",
    log:
        "logs/pairs/{pair}/pair_bottleneck.log",
    conda:
        "../envs/moetopo.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    script:
        "../scripts/pair_bottleneck.py"
