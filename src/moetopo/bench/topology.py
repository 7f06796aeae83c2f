"""Benchmark: the per-layer topology stage (``layer_topology``) against a naive reimplementation.

Experts are random points in R^32 (so the distances look like real expert distances: all
similar, none tiny), the scale is the 0.3 quantile (~30% edge density), and every part runs:
persistence with its null model (the same ripser calls in both versions), the Procrustes
sheaf (d = 2, in_dim 64), the orientation-free Hodge split and HodgeCover with a cheap
synthetic merge barrier and the triangle cap. The naive version builds the same complex
with Python loops over vertex triples, dense boundary matrices and coboundary in loops,
Betti numbers and sheaf ranks with numpy.linalg.matrix_rank and the Hodge projectors'
diagonals from dense pseudo-inverses; it runs in a child process, given
``--naive-timeout`` seconds, and larger sizes are skipped once it fails to finish or its
dense matrices would not fit.

Both run as the pipeline runs the stage: in a fresh process whose BLAS and OpenMP have
one thread (the rule has threads: 1, which snakemake passes on as OPENBLAS_NUM_THREADS
and OMP_NUM_THREADS). Ours is timed ``--repeat`` times, the sizes taking turns, and the
fastest run counts. The goal: a layer of 384 experts (Kimi-K2's) in under 5 s.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager

import numpy as np
from scipy.spatial.distance import pdist, squareform

from moetopo.bench.measure import in_fresh_process
from moetopo.geometry.stalks import leading_input_directions
from moetopo.stages.cohomology import topology_tables
from moetopo.topology.complex import epsilon_at_quantile, rips_complex
from moetopo.topology.hodgecover import hodgecover_ranking
from moetopo.topology.layer import TopologyParams, layer_topology
from moetopo.topology.null import calibrate, null_seed
from moetopo.topology.persistence import vietoris_rips_diagrams
from moetopo.topology.sheaf import procrustes_maps


def synthetic_layer(n: int, dim: int, seed: int, shape: str = "gaussian") -> dict:
    """Random experts: Gaussian points in R^dim, or ('torus') a noisy flat torus in R^dim,
    whose loops keep b1 > 0 at low scales so the iterative Hodge projection runs too."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n, dim))
    if shape == "torus":
        a, b = rng.uniform(0, 2 * np.pi, size=(2, n))
        points = 0.05 * points
        points[:, :4] += np.column_stack([np.cos(a), np.sin(a), np.cos(b), np.sin(b)])
    weights = rng.normal(size=(n, 128, 64))  # stacked gate/up rows, in_dim 64
    rate = np.triu(rng.uniform(0.0, 0.2, size=(n, n)), 1)
    return {
        "points": points,
        "distances": squareform(pdist(points)),
        "frames": np.stack([leading_input_directions(w, 2) for w in weights]),
        "coactivation": rate + rate.T,
        "load": rng.dirichlet(np.ones(n)),
    }


def ours(case: dict, quantile: float) -> dict:
    points = case["points"]

    def merge_barrier(experts: tuple[int, ...]) -> float:
        group = points[list(experts)]
        return float(np.linalg.norm(group - group.mean(axis=0), axis=1).mean())

    start = time.perf_counter()
    out = layer_topology(
        {"function": case["distances"]},
        coactivation=case["coactivation"],
        load=case["load"],
        frames=case["frames"],
        merge_barrier=merge_barrier,
        params=TopologyParams(epsilon_quantiles=(quantile,), cover_quantile=quantile),
    )
    topology_tables(0, out)  # the stage's tables are part of its cost
    seconds = time.perf_counter() - start
    scale = out.scales[0]
    return {
        "seconds": seconds,
        "n_edges": int(scale.hodge["n_edges"]),
        "n_triangles": int(scale.hodge["n_triangles"]),
        "b1": int(scale.hodge["betti1"]),
        "h0": int(scale.sheaf["h0"]),
    }


def naive(case: dict, quantile: float) -> dict:
    """The same layer with textbook dense linear algebra and Python loops over simplices."""
    start = time.perf_counter()
    d = case["distances"]
    n = len(d)
    params = TopologyParams()
    rng = null_seed(params.seed, 0, "function")
    null = calibrate(
        d, kind="metric", maxdim=1, coeff=127, level=0.01, draws=params.null_draws, rng=rng
    )
    vietoris_rips_diagrams(d, threshold=null.thresholds)
    eps = epsilon_at_quantile(d, quantile)
    edges = [(i, j) for i in range(n) for j in range(i + 1, n) if d[i, j] <= eps]
    index = {e: k for k, e in enumerate(edges)}
    triangles = [
        (i, j, k)
        for i in range(n)
        for j in range(i + 1, n)
        for k in range(j + 1, n)
        if (i, j) in index and (i, k) in index and (j, k) in index
    ]
    b1m = np.zeros((n, len(edges)))
    for e, (i, j) in enumerate(edges):
        b1m[i, e], b1m[j, e] = -1.0, 1.0
    b2m = np.zeros((len(edges), len(triangles)))
    for t, (i, j, k) in enumerate(triangles):
        b2m[index[j, k], t], b2m[index[i, k], t], b2m[index[i, j], t] = 1.0, -1.0, 1.0
    betti1 = len(edges) - np.linalg.matrix_rank(b1m) - np.linalg.matrix_rank(b2m)
    signal = np.array([d[e] for e in edges])
    gradient = np.diag(b1m.T @ np.linalg.pinv(b1m.T))
    curl = np.diag(b2m @ np.linalg.pinv(b2m)) if triangles else np.zeros(len(edges))
    harmonic_energy = signal**2 * np.clip(1 - gradient - curl, 0, None)
    maps = procrustes_maps(case["frames"], np.array(edges))
    delta = np.zeros((2 * len(edges), 2 * n))
    for e, (i, j) in enumerate(edges):
        w = np.sqrt(case["coactivation"][i, j])
        delta[2 * e : 2 * e + 2, 2 * j : 2 * j + 2] = w * np.eye(2)
        delta[2 * e : 2 * e + 2, 2 * i : 2 * i + 2] = -w * maps[e]
    h0 = 2 * n - np.linalg.matrix_rank(delta)
    np.linalg.eigvalsh(delta.T @ delta)
    cx = rips_complex(d, eps)
    hodgecover_ranking(cx, harmonic_energy, np.zeros(len(triangles)), case["load"])
    return {"seconds": time.perf_counter() - start, "b1": int(betti1), "h0": int(h0)}


GOAL_EXPERTS, GOAL_SECONDS = 384, 5.0
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def one_thread():
    """Processes spawned inside start with one BLAS/OpenMP thread, as a threads: 1 rule's."""
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ours_case(args: argparse.Namespace, n: int) -> dict:
    ours(synthetic_layer(8, args.dim, args.seed), args.quantile)  # warm imports and caches
    return ours(synthetic_layer(n, args.dim, args.seed, args.shape), args.quantile)


def run_ours(args: argparse.Namespace, n: int) -> dict:
    """``ours`` in a spawned one-thread process."""
    with one_thread():
        return in_fresh_process(ours_case, args, n).result


def naive_case(args: argparse.Namespace, n: int) -> dict:
    return naive(synthetic_layer(n, args.dim, args.seed, args.shape), args.quantile)


def run_naive(args: argparse.Namespace, n: int) -> dict | None:
    """``naive`` in a spawned one-thread process; None when it does not finish within the
    timeout or its process dies (out of memory below the --naive-max-gib estimate)."""
    try:
        with one_thread():
            measured = in_fresh_process(naive_case, args, n, timeout=args.naive_timeout)
    except RuntimeError:
        return None
    return None if measured is None else measured.result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m moetopo.bench topology", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 64, 128, 256, 384])
    parser.add_argument("--dim", type=int, default=32, help="embedding dimension of the experts")
    parser.add_argument("--quantile", type=float, default=0.3, help="scale: distance quantile")
    parser.add_argument("--naive-timeout", type=float, default=60.0)
    parser.add_argument("--naive-max-gib", type=float, default=4.0, help="skip larger dense B2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=["gaussian", "torus"], default="gaussian")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of ours per size; the fastest counts"
    )
    args = parser.parse_args(argv)

    fastest: dict[int, dict] = {}
    for _ in range(max(1, args.repeat)):  # rounds, so that every size sees the noise
        for n in args.sizes:
            result = run_ours(args, n)
            if n not in fastest or result["seconds"] < fastest[n]["seconds"]:
                fastest[n] = result
    print(f"{args.shape} experts in R^{args.dim}, scale = {args.quantile} distance quantile")
    print(f"ours: fastest of {max(1, args.repeat)} runs; BLAS and OpenMP on one thread")
    header = (
        f"{'experts':>7} {'edges':>7} {'triangles':>9} {'b1':>3} {'ours s':>8} "
        f"{'naive s':>8} {'ratio':>7} {'us/tri':>7}"
    )
    print(header)
    naive_alive, stopped, last_naive = True, "", ""
    for n in args.sizes:
        result = fastest[n]
        naive_cell, ratio = "-", "-"
        gib = 8 * result["n_edges"] * result["n_triangles"] / 2**30
        if naive_alive and gib > args.naive_max_gib:
            naive_alive, naive_cell = False, f">{args.naive_max_gib:g}GiB"
            stopped = f"from {n} experts on its dense B2 would take {gib:.0f} GiB"
        elif naive_alive:
            slow = run_naive(args, n)
            if slow is None:
                naive_alive, naive_cell = False, f">{args.naive_timeout:g}"
                stopped = f"from {n} experts on it takes over {args.naive_timeout:g} s"
            else:
                if (slow["b1"], slow["h0"]) != (result["b1"], result["h0"]):
                    raise AssertionError(f"naive and ours disagree at n={n}: {slow} vs {result}")
                naive_cell = f"{slow['seconds']:.2f}"
                ratio = f"{slow['seconds'] / result['seconds']:.1f}x"
                last_naive = f"{n} experts: naive {naive_cell} s, ours {result['seconds']:.2f} s"
        per_triangle = 1e6 * result["seconds"] / max(1, result["n_triangles"])
        print(
            f"{n:>7} {result['n_edges']:>7} {result['n_triangles']:>9} {result['b1']:>3} "
            f"{result['seconds']:>8.2f} {naive_cell:>8} {ratio:>7} {per_triangle:>7.2f}",
            flush=True,
        )
    if GOAL_EXPERTS in fastest:
        seconds = fastest[GOAL_EXPERTS]["seconds"]
        verdict = "met" if seconds < GOAL_SECONDS else "NOT met"
        print(f"{GOAL_EXPERTS} experts: {seconds:.2f} s (goal < {GOAL_SECONDS:g} s: {verdict})")
        if naive_alive:
            print(f"baseline in this run: naive at {GOAL_EXPERTS} experts in the table above")
        else:
            ran = f"; the largest it ran: {last_naive}" if last_naive else ""
            print(f"baseline in this run: naive skipped {stopped}{ran}")
    return 0
