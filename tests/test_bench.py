"""The benchmark harness: what it times and which run it keeps."""

from __future__ import annotations

from moetopo.bench.measure import fastest_of


def test_fastest_of_keeps_a_jobs_own_clock_its_result_and_the_highest_peak():
    """A job returning a float reports its own seconds; another is timed whole."""
    calls = []
    best = fastest_of(
        [("own clock", float, ("0.25",)), ("timed whole", len, ("abc",))],
        repeat=2,
        before_each=lambda: calls.append(1),
    )
    assert list(best) == ["own clock", "timed whole"] and len(calls) == 4
    assert best["own clock"].seconds == 0.25 and best["own clock"].result == 0.25
    assert best["timed whole"].result == 3 and 0 < best["timed whole"].seconds < 0.25
    assert all(m.peak_rss_mib > 0 for m in best.values())


def test_compression_bench_runs_tiny_and_its_floor_is_the_blocks_forward(tmp_path, capsys):
    """The bench counts 3 budgets x 11 method runs (random's 5 draws each count), prints
    the ratio and the peak RSS; its plain numpy floor computes what the block computes."""
    import numpy as np

    from moetopo.bench.__main__ import main
    from moetopo.bench.compression import moe_forward, qwen3_layer, read_layer, tokens
    from moetopo.bench.layouts import write_sparse
    from moetopo.checkpoint.model import open_model
    from moetopo.compression.model import routed_block

    tiny = ["--experts", "32", "--hidden", "32", "--width", "16", "--tokens", "256"]
    assert main(["compression", *tiny, "--repeats", "1", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "budgets x methods: 3 x 11 = 33" in out and "random x5" in out
    assert "ratio ours / (budgets x methods x floor): " in out and "peak RSS: ours" in out
    assert "<= before + bound" in out
    assert not list(tmp_path.iterdir())  # the layer is written to a temporary directory

    model = write_sparse(tmp_path / "layer", *qwen3_layer(12, 32, 16), 2)
    block = routed_block(open_model(model), 0)
    assert block.rule.top_k == 8 and block.rule.norm_topk_prob
    x = tokens(64, 32)
    full = block.route(x)
    router, experts = read_layer(str(model))
    np.testing.assert_allclose(
        moe_forward(x, router, experts, 8),
        block.output(x, full.experts, full.weights),
        rtol=1e-6,
        atol=1e-9,
    )
