"""Merge barriers measured on the block: what merging a set of experts costs the layer's output.

barrier(S) = sum_t ||y_t - y'_t||^2 / sum_t ||y_t||^2 over the calibration tokens, where y'
serves every token routed to a member of S by the frequency-weighted merge of S with the
gate weights of S's slots added up (HodgeCover's pair barrier; the paper's edge weight).
Each member's contribution w f_e(x) on its own tokens is computed once, so a barrier costs
one forward of the merged expert on the tokens routed to S.
"""

from __future__ import annotations

import numpy as np

from moetopo.checkpoint.experts import expert_output
from moetopo.compression.block import RoutedBlock, frequency_weighted_merge
from moetopo.routing.rule import Routed


class BlockMergeBarrier:
    """barrier(S) for sets of expert ids on fixed calibration tokens ``x`` routed as ``full``."""

    def __init__(self, block: RoutedBlock, x: np.ndarray, full: Routed, load: np.ndarray):
        self.block, self.x, self.load = block, x, load
        self.gate = {}  # expert -> (tokens, summed gate weight)
        self.contribution = {}  # expert -> w f_e(x) on its tokens
        self.output_norm = {}  # expert -> ||f_e(x)|| on its tokens
        total = np.zeros(x.shape, dtype=np.float64)
        for e in range(block.n_experts):
            hit = full.experts == e
            tokens = np.flatnonzero(hit.any(axis=1))
            gate = np.where(hit[tokens], full.weights[tokens], 0.0).sum(axis=1)
            f = expert_output(block.expert(e), x[tokens], block.activation, block.limit)
            self.gate[e] = (tokens, gate)
            self.output_norm[e] = np.linalg.norm(f, axis=1)
            self.contribution[e] = gate[:, None] * f
            total[tokens] += self.contribution[e]
        self.scale = float(np.sum(total**2))
        self.mean_outputs = np.stack(
            [
                self.contribution[e].sum(axis=0) / max(self.gate[e][1].sum(), 1e-30)
                for e in range(block.n_experts)
            ]
        )  # gate-weighted mean output of each expert (zero for an unused one)
        self.cache: dict[tuple[int, ...], float] = {}

    def __call__(self, experts) -> float:
        members = tuple(sorted({int(e) for e in experts}))
        if members in self.cache:
            return self.cache[members]
        gate = np.zeros(len(self.x))
        old = np.zeros(self.x.shape, dtype=np.float64)
        for e in members:
            tokens, g = self.gate[e]
            gate[tokens] += g
            old[tokens] += self.contribution[e]
        tokens = np.flatnonzero(gate > 0)
        merged = frequency_weighted_merge(self.block, members, self.load)
        new = expert_output(merged, self.x[tokens], self.block.activation, self.block.limit)
        error = float(np.sum((gate[tokens, None] * new - old[tokens]) ** 2))
        value = error / self.scale if self.scale > 0 else 0.0
        self.cache[members] = value
        return value
