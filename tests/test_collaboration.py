"""Collaboration matrices S: known answers for the spectrum, entropy and specialisation,
invariance to relabelling the experts, the agreement test on planted and shuffled
structure, and the learned S of a CT-MoE checkpoint read back exactly."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moetopo.artefacts import columns
from moetopo.artefacts.views import gates_from_rows
from moetopo.checkpoint.model import open_model
from moetopo.collaboration.agreement import (
    neighbour_agreement,
    neighbour_count,
    neighbour_sets,
    overlap,
)
from moetopo.collaboration.matrices import coactivation_scores, ct_moe_matrix, router_scores
from moetopo.collaboration.specialisation import domain_shares, specialisation
from moetopo.collaboration.spectrum import (
    eigenvalues,
    entropy_ceiling,
    max_off_diagonal,
    row_entropy,
    stationary,
    summary,
)
from moetopo.compression.block import dropped
from moetopo.compression.export import write_pruned_checkpoint
from moetopo.errors import MoetopoError
from moetopo.fixtures.families import FAMILY_RECIPES, family_model, write_family
from moetopo.report import fmt
from moetopo.report.collaboration import collaboration_blocks
from moetopo.report.data import ModelData
from moetopo.report.doc import Figure
from moetopo.report.markdown import render_markdown
from moetopo.routing.rule import coactivation_counts
from moetopo.stages.collaboration import CollaborationSettings, collaboration_tables
from moetopo.stages.expert_geometry import layer_distances
from moetopo.stages.routing import routing_tables

from conftest import REPO, gate_rows

CT_MOE = REPO / "resources" / "zoo" / "ctmoe-e8k3-h64-s0"


def random_s(n: int, seed: int) -> np.ndarray:
    """A row-stochastic S with zero diagonal and no symmetry: Dirichlet rows."""
    rng = np.random.default_rng(seed)
    s = np.zeros((n, n))
    for i in range(n):
        s[i, np.arange(n) != i] = rng.dirichlet(np.full(n - 1, 0.5))
    return s


def direct_power_iteration(s: np.ndarray, steps: int = 20_000) -> np.ndarray:
    pi = np.full(len(s), 1.0 / len(s))
    for _ in range(steps):
        pi = 0.5 * (pi + pi @ s)
    return pi


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_row_stochastic_s_has_top_eigenvalue_one_and_its_stationary_distribution(seed):
    s = random_s(8, seed)
    values = eigenvalues(s)
    assert abs(values[0] - 1.0) < 1e-12
    assert np.all(np.abs(values) <= 1 + 1e-12)
    pi = stationary(s)
    assert pi.unit_multiplicity == 1
    np.testing.assert_allclose(pi.distribution @ s, pi.distribution, atol=1e-14)
    np.testing.assert_allclose(pi.distribution, direct_power_iteration(s), atol=1e-12)
    assert pi.power_gap < 1e-12
    # the reference's symmetric solver reads one triangle of S and misses the 1
    assert abs(np.linalg.eigvalsh(s).max() - 1.0) > 1e-3


def test_s_of_two_closed_classes_has_eigenvalue_one_twice_and_no_unique_stationary():
    """As DeepSeek-V3's group-limited routing gives: experts of two groups never together."""
    block = random_s(4, 3)
    s = np.zeros((8, 8))
    s[:4, :4], s[4:, 4:] = block, random_s(4, 4)
    pi = stationary(s)
    assert pi.unit_multiplicity == 2 and np.isnan(pi.distribution).all()
    assert summary(s)["second_modulus"] == pytest.approx(1.0)


def test_a_uniform_s_has_the_entropy_ceiling_and_peak_one_over_n_minus_one():
    for n in (2, 3, 8, 16):
        s, dangling = ct_moe_matrix(np.zeros((n, n)))
        assert dangling == 0
        np.testing.assert_allclose(s, (1 - np.eye(n)) / (n - 1), atol=1e-15)
        np.testing.assert_allclose(row_entropy(s), np.log(n - 1), atol=1e-14)
        assert entropy_ceiling(n) == pytest.approx(np.log(n - 1))
        assert max_off_diagonal(s) == pytest.approx(1 / (n - 1))


def test_coactivation_s_is_the_partner_distribution_and_settles_on_the_load():
    rng = np.random.default_rng(0)
    chosen = np.argsort(rng.gumbel(size=(500, 6)) + np.arange(6) / 3, axis=1)[:, :3]
    counts = coactivation_counts(chosen, 6)
    s, dangling = ct_moe_matrix(coactivation_scores(counts))
    off = counts * (1 - np.eye(6))
    np.testing.assert_allclose(s, off / off.sum(axis=1, keepdims=True), atol=1e-15)
    load = np.diag(counts)  # Σ_j≠i C_ij = (k - 1) load_i: a reversible walk on the load
    np.testing.assert_allclose(stationary(s).distribution, load / load.sum(), atol=1e-12)
    assert dangling == 0


def test_an_expert_never_chosen_with_another_gets_a_uniform_row():
    counts = np.array([[5, 2, 0], [2, 4, 0], [0, 0, 3]])
    s, dangling = ct_moe_matrix(coactivation_scores(counts))
    assert dangling == 1
    np.testing.assert_allclose(s[2], [0.5, 0.5, 0.0])


def test_router_scores_ignore_a_vector_added_to_every_row_when_centred():
    rng = np.random.default_rng(1)
    router = rng.normal(size=(5, 12))
    shifted = router + rng.normal(size=12)
    np.testing.assert_allclose(router_scores(router, True), router_scores(shifted, True))
    assert not np.allclose(router_scores(router, False), router_scores(shifted, False))


def test_specialisation_of_an_expert_seen_in_one_domain_is_plus_or_minus_one():
    code = np.array([[1, 0, 1, 0], [1, 0, 0, 1]], dtype=bool)
    prose = np.array([[0, 1, 1, 0], [0, 1, 0, 1], [0, 1, 1, 0]], dtype=bool)
    s = specialisation(domain_shares(code), domain_shares(prose))
    assert s[0] == 1.0 and s[1] == -1.0
    assert s[2] == pytest.approx((0.5 - 2 / 3) / (0.5 + 2 / 3))
    assert np.isnan(specialisation([0.0], [0.0])[0])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(3, 9),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_every_figure_is_invariant_to_relabelling_the_experts(n, seed, data):
    order = np.array(data.draw(st.permutations(range(n))))
    raw = np.random.default_rng(seed).normal(size=(n, n))
    s, _ = ct_moe_matrix(raw)
    relabelled, _ = ct_moe_matrix(raw[np.ix_(order, order)])
    np.testing.assert_allclose(relabelled, s[np.ix_(order, order)], atol=1e-15)
    a, b = summary(s), summary(relabelled)
    for key in ("entropy_mean", "entropy_min", "max_offdiag", "top_eigenvalue", "asymmetry"):
        assert b[key] == pytest.approx(a[key], abs=1e-12), key
    assert b["second_modulus"] == pytest.approx(a["second_modulus"], abs=1e-9)
    spectrum = np.sort_complex(np.round(np.array(a["eigenvalues_real"]), 9))
    assert np.allclose(np.sort_complex(np.round(np.array(b["eigenvalues_real"]), 9)), spectrum)
    np.testing.assert_allclose(np.array(b["stationary"]), np.array(a["stationary"])[order], 1e-10)
    points = np.random.default_rng(seed + 1).normal(size=(n, 2))
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    k = neighbour_count(n, 0.25)
    agree = overlap(neighbour_sets(s, k, True), neighbour_sets(d, k, False))
    moved = neighbour_sets(d[np.ix_(order, order)], k, False)
    assert overlap(neighbour_sets(relabelled, k, True), moved) == pytest.approx(agree)


def planted(n: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distances of points in the plane, and the S whose collaborators are their nearest."""
    points = np.random.default_rng(seed).normal(size=(n, 2))
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    s, _ = ct_moe_matrix(-distances / 0.2)
    return s, distances


def test_agreement_is_significant_on_planted_structure_and_not_on_shuffled():
    s, distances = planted()
    k = neighbour_count(len(s), 0.25)
    found = neighbour_agreement(s, distances, k, 999, 0)
    assert found.overlap == 1.0 and found.p_value == pytest.approx(1 / 1000)
    assert found.null_mean < 0.5 and not found.exact
    order = np.random.default_rng(5).permutation(len(s))
    shuffled = neighbour_agreement(s, distances[np.ix_(order, order)], k, 999, 0)
    assert shuffled.overlap < 0.5 and shuffled.p_value > 0.2


def test_small_layers_are_tested_over_every_relabelling():
    s, distances = planted(n=4)
    found = neighbour_agreement(s, distances, 1, 999, 0)
    assert found.exact and found.n_permutations == 24 and found.p_value >= 1 / 24


def read_bf16(model_dir, name: str) -> np.ndarray:
    """A BF16 tensor parsed from the shard bytes by hand, independently of moetopo."""
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    raw = (model_dir / index["weight_map"][name]).read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    info = json.loads(raw[8 : 8 + size])[name]
    assert info["dtype"] == "BF16"
    begin, end = (8 + size + offset for offset in info["data_offsets"])
    return np.frombuffer(raw[begin:end], dtype=ml_dtypes.bfloat16).reshape(info["shape"])


def test_the_zoo_ct_moe_checkpoint_is_read_without_transformers_as_its_family():
    model = open_model(CT_MOE)
    assert model.layout.family == "ct_moe" and model.layout.warnings == []
    config = json.loads((CT_MOE / "config.json").read_text())
    for layer in model.layout.moe_layers:
        (name,) = model.layout.tensors_of("collaboration", layer)
        stored = read_bf16(CT_MOE, name)
        np.testing.assert_array_equal(model.reader.read(name), stored.astype(np.float32))
        # the router bias is routing_scale x the column sums of S, folded at save time
        s, _ = ct_moe_matrix(stored.astype(np.float64), config["s_temp"])
        bias = model.reader.read(model.layout.layers[layer].router_bias)
        np.testing.assert_allclose(bias, config["routing_scale"] * s.sum(axis=0), rtol=2**-7)


def test_learned_s_is_read_back_exactly_and_captured_logits_carry_its_routing_bias(tmp_path):
    torch = pytest.importorskip("torch")
    from moetopo.capture import capture_logits
    from moetopo.zoo.build import save_model
    from moetopo.zoo.ctmoe import CtMoeForCausalLM
    from moetopo.zoo.specs import ModelSpec
    from moetopo.zoo.train import new_model, round_to_bf16

    spec = ModelSpec(id="t", family="ct_moe", experts=4, top_k=3, hidden=32, layers=2,
                     expert_inter=16, steps=1, seed=0, heads=2, kv_heads=1,
                     extra={"s_temp": 0.5})  # fmt: skip
    model = new_model(spec)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.block_sparse_moe.collaboration.normal_()
    round_to_bf16(model)
    raws = [layer.block_sparse_moe.collaboration.detach().numpy().copy()
            for layer in model.model.layers]  # fmt: skip
    save_model(model, tmp_path / "ct")
    ours = open_model(tmp_path / "ct")
    for layer, raw in enumerate(raws):
        (name,) = ours.layout.tensors_of("collaboration", layer)
        np.testing.assert_array_equal(ours.reader.read(name), raw)
    reloaded = CtMoeForCausalLM.from_pretrained(tmp_path / "ct").eval()
    ids = list(range(40, 104))
    captured, _ = capture_logits(reloaded, ids, seq_len=32)
    with torch.no_grad():
        forward = reloaded(torch.tensor([ids[:32], ids[32:]])).router_logits
    for layer, logits in enumerate(forward):
        np.testing.assert_allclose(captured[layer], logits.numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def ct_moe_run() -> dict[str, pd.DataFrame]:
    """The stage's tables of the zoo's CT-MoE model, from routing and router and
    coactivation distances computed here, with the distances it compared."""
    model = open_model(CT_MOE)
    columns, _ = gate_rows(model)
    gates = gates_from_rows(columns)
    captured = str(CT_MOE / "router_logits.npz")
    routing, coactivation, _ = routing_tables(model, gates, 64, 0, captured).tables()
    pairs = []
    for layer in model.layout.moe_layers:
        matrices, _, _ = layer_distances(model, layer, ["router_l1", "coactivation"], gates,
                                         coactivation)  # fmt: skip
        for source, matrix in matrices.items():
            i, j = np.triu_indices(len(matrix), 1)
            pairs.append(pd.DataFrame({"layer": layer, "source": source, "i": i, "j": j,
                                       "distance": matrix[i, j]}))  # fmt: skip
    distances = pd.concat(pairs, ignore_index=True)
    settings = CollaborationSettings(permutations=99)
    result = collaboration_tables(model, gates, coactivation, routing, distances, settings,
                                  captured)  # fmt: skip
    assert result.warnings == []
    return result.tables() | {"expert_distances": distances}


def test_the_stage_on_the_zoo_ct_moe_model(ct_moe_run):
    table = ct_moe_run["collaboration"]
    layers = sorted(set(table.layer))
    assert set(zip(table.layer, table.source, strict=True)) == {
        (layer, source) for layer in layers for source in ("learned", "coactivation", "router")
    }
    assert (table.top_eigenvalue - 1).abs().max() < 1e-12
    assert (table.stationary_power_gap < 1e-10).all() and (table.unit_multiplicity == 1).all()
    assert (table.entropy_mean <= table.entropy_ceiling + 1e-12).all()
    learned = table[table.source == "learned"]
    assert set(learned.basis) == {"checkpoint"} and (learned.temperature == 1.0).all()
    assert len(ct_moe_run["collaboration_entries"]) == 3 * len(layers) * 8 * 8
    agreement = ct_moe_run["collaboration_agreement"]
    assert len(agreement) == 3 * len(layers) * 2 and agreement.p_adjusted.notna().all()
    special = ct_moe_run["domain_specialisation"]
    assert set(special.domain_a) == {"code"} and set(special.domain_b) == {"prose"}
    assert special.specialisation.abs().max() <= 1


def test_the_report_section_shows_the_artefacts_and_only_when_they_exist(ct_moe_run):
    empty = {t: pd.DataFrame(columns=columns(t)) for t in ("hodge", "hodgecover")}
    tables = ct_moe_run | empty
    model = ModelData("ctmoe", str(CT_MOE), {}, tables, {}, [])
    blocks = collaboration_blocks(SimpleNamespace(models=[model]))
    text = render_markdown(blocks)
    assert "## Expert collaboration" in text
    learned = ct_moe_run["collaboration"].query("source == 'learned'")
    gap = fmt.sig(float((learned.top_eigenvalue - 1).abs().max()), 2)
    assert f"| ctmoe | learned (checkpoint) | {len(learned)} |" in text and gap in text
    (figure,) = [b for b in blocks[-1].blocks if isinstance(b, Figure)]
    assert figure.png.startswith(b"\x89PNG")
    bare = ModelData("plain", "", {}, {"collaboration": pd.DataFrame()}, {}, [])
    assert collaboration_blocks(SimpleNamespace(models=[bare])) == []


def test_dropping_experts_of_a_ct_moe_checkpoint_is_refused(tmp_path):
    keep = np.array([True, True, False, True, True, False, True, True])
    selection = {layer: dropped(8, keep) for layer in open_model(CT_MOE).layout.moe_layers}
    with pytest.raises(MoetopoError, match="collaboration matrix"):
        write_pruned_checkpoint(CT_MOE, tmp_path / "pruned", selection)
    assert not (tmp_path / "pruned").exists()


def test_capture_records_each_domains_tokens_and_refuses_overlapping_ranges(tmp_path):
    from moetopo.capture import parse_domains, tokenize_domains

    raw = b"def f(): pass\nSome prose.\n"
    domains = parse_domains(["prose=14:26", "code=0:14"])
    ids, kind, spans = tokenize_domains(tmp_path, raw, domains)
    assert kind == "byte" and ids == list(raw) and spans == {"code": [0, 14], "prose": [14, 26]}
    with pytest.raises(ValueError, match="overlap"):
        tokenize_domains(tmp_path, raw, {"code": (0, 15), "prose": (14, 26)})
    with pytest.raises(ValueError, match="NAME=START:STOP"):
        parse_domains(["code:0:14"])


@pytest.mark.parametrize("family", sorted(FAMILY_RECIPES))
def test_router_and_coactivation_s_on_every_family(family, tmp_path):
    """Every family's S from its router rows and its probe coactivation: row-stochastic
    with a zero diagonal and a top eigenvalue of exactly 1."""
    model = open_model(write_family(family_model(family, n_experts=4), family, tmp_path))
    layout = model.layout
    gates = gates_from_rows(gate_rows(model)[0])
    routing, coactivation, _ = routing_tables(model, gates, 32, 0, None).tables()
    distances = pd.DataFrame(columns=columns("expert_distances"))
    result = collaboration_tables(
        model, gates, coactivation, routing, distances, CollaborationSettings(permutations=99)
    )
    summary = result.tables()["collaboration"]
    assert "router" in set(summary.source) and sorted(set(summary.layer)) == layout.moe_layers
    assert (summary.row_sum_error < 1e-12).all()
    assert np.allclose(summary.top_eigenvalue, 1.0, atol=1e-12)


def test_the_report_draws_a_two_expert_layer(tmp_path):
    """The toy grid's two-expert models: S is [[0, 1], [1, 0]] and the experts of the
    complex panel lie on one line; the figure must still draw."""
    from moetopo.report.collaboration import layer_figure

    toy = REPO / "resources" / "toy" / "toy-s50-e2k1"
    model = open_model(toy)
    gates = gates_from_rows(gate_rows(model)[0])
    captured = str(toy / "router_logits.npz")
    routing, coactivation, _ = routing_tables(model, gates, 16, 0, captured).tables()
    distances = pd.DataFrame(columns=columns("expert_distances"))
    settings = CollaborationSettings(sources=("router",), permutations=9)
    tables = collaboration_tables(model, gates, coactivation, routing, distances, settings)
    empty = {t: pd.DataFrame(columns=columns(t)) for t in ("hodge", "hodgecover")}
    data = ModelData(
        "toy", str(toy), {}, tables.tables() | empty | {"expert_distances": distances}, {}, []
    )
    assert layer_figure(data, 0).startswith(b"\x89PNG")
