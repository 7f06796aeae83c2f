"""The benchmark harness: what it times and which run it keeps."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_the_planner_extrapolates_per_layer_costs_to_the_published_width(tmp_path):
    """A stage costing 1 s + 1 s per million expert parameters per layer, measured at two
    widths, projects to its full-width cost times the layout's MoE layers; a noisy pair
    never projects below what was measured; job logs are read by stage."""
    from moetopo.bench.layouts import FULL_SCALE, moe_layer_count
    from moetopo.bench.scale import extrapolate, job_costs, project, widths

    assert extrapolate(1.0, 2.0, 2.0, 3.0, 10.0) == 11.0
    assert extrapolate(1.0, 3.0, 2.0, 2.0, 10.0) == 3.0  # a falling pair: the larger
    name = "qwen3-235b-a22b"
    full = widths(FULL_SCALE[name][0]())
    assert full == {"expert": 3.0 * 4096 * 1536, "hidden": 4096.0}
    measured = []
    for p in (1e6, 2e6):
        cost = {"seconds": 1 + p / 1e6, "read_mib": p / 2**20, "rss_mib": 100.0}  # one job
        measured.append({"widths": {"expert": p, "hidden": 1.0},
                         "stages": {"cohomology": cost}})  # fmt: skip
    (row,) = project(name, *measured)
    assert row["per"] == "layer" and row["seconds"] == pytest.approx(1 + full["expert"] / 1e6)
    assert moe_layer_count(name) == 94
    assert row["hours"] == pytest.approx(row["seconds"] * 94 / 3600)
    assert row["read_gib"] == pytest.approx(full["expert"] / 2**30)
    for path, line in (("m/geometry/3.log", "peak RSS 90 MiB, read 12 MiB, 1.50 s"),
                       ("m/gates.log", "INFO peak RSS 80 MiB, read 1 MiB, 0.25 s"),
                       ("m/inventory/model-00001.log", "peak RSS 70 MiB, read 0 MiB, 0.10 s"),
                       ("m/inventory.log", "no cost line: a failed job")):  # fmt: skip
        (tmp_path / "logs" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "logs" / path).write_text(line + "\n")
    jobs = {j["stage"]: j for j in job_costs(tmp_path, "m")}
    assert set(jobs) == {"expert_geometry", "gates", "inventory_shard"}
    assert jobs["expert_geometry"] == {"stage": "expert_geometry", "seconds": 1.5,
                                       "read_mib": 12.0, "rss_mib": 90.0,
                                       "log": "logs/m/geometry/3.log"}  # fmt: skip


EXPERTS = {"deepseek-v3": 256, "kimi-k2": 384, "qwen3-235b-a22b": 128, "llama4-maverick": 128}


@pytest.mark.parametrize("name", list(EXPERTS))
def test_narrowed_layouts_keep_the_experts_and_routing_of_the_published_one(tmp_path, name):
    """What the planner measures: every expert, the published top-k, one MoE layer, at
    1/64 of the width, with real (nonzero) expert bytes."""
    from moetopo.bench.layouts import FULL_SCALE, reduced, write_sparse
    from moetopo.checkpoint.experts import read_expert
    from moetopo.checkpoint.model import open_model

    published = FULL_SCALE[name][0]()
    text = published.get("text_config", published)
    model = open_model(write_sparse(tmp_path, *reduced(name, 64), 2))
    assert len(model.layout.layers) == 1
    for moe in model.layout.layers.values():
        assert moe.n_experts == EXPERTS[name] and moe.top_k == text["num_experts_per_tok"]
        expert = read_expert(model.reader, moe, moe.n_experts - 1)
        assert expert.up.shape[1] * 64 == text["hidden_size"]
        assert np.all(np.isfinite(expert.down)) and np.abs(expert.down).max() > 0
