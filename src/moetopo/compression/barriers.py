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
    """barrier(S) for sets of expert ids on fixed calibration tokens ``x`` routed as ``full``.

    Each expert's output f_e(x) on its tokens is kept as computed (float32 for float32
    weights and tokens), and its contribution w f_e(x) formed in float64 when a barrier
    needs it: the same numbers as keeping the float64 contributions, at half the memory.
    """

    def __init__(self, block: RoutedBlock, x: np.ndarray, full: Routed, load: np.ndarray):
        self.block, self.x, self.load = block, x, load
        self.gate = {}  # expert -> (tokens, summed gate weight)
        self.outputs = {}  # expert -> f_e(x) on its tokens
        self.output_norm = {}  # expert -> ||f_e(x)|| on its tokens
        total = np.zeros(x.shape, dtype=np.float64)
        for e in range(block.n_experts):
            hit = full.experts == e
            tokens = np.flatnonzero(hit.any(axis=1))
            gate = np.where(hit[tokens], full.weights[tokens], 0.0).sum(axis=1)
            f = expert_output(block.expert(e), x[tokens], block.activation, block.limit)
            self.gate[e] = (tokens, gate)
            self.outputs[e] = f
            self.output_norm[e] = np.linalg.norm(f, axis=1)
            total[tokens] += self.contribution(e)
        self.scale = float(np.sum(total**2))
        self.cache: dict[tuple[int, ...], float] = {}

    def contribution(self, e: int) -> np.ndarray:
        """w f_e(x) on expert ``e``'s tokens, float64."""
        return self.gate[e][1][:, None] * self.outputs[e]

    def __call__(self, experts) -> float:
        members = tuple(sorted({int(e) for e in experts}))
        if members in self.cache:
            return self.cache[members]
        tokens = np.unique(np.concatenate([self.gate[e][0] for e in members]))
        gate = np.zeros(len(tokens))
        old = np.zeros((len(tokens), self.x.shape[1]), dtype=np.float64)
        for e in members:
            rows = np.searchsorted(tokens, self.gate[e][0])
            gate[rows] += self.gate[e][1]
            old[rows] += self.contribution(e)
        served = gate > 0
        tokens, gate, old = tokens[served], gate[served], old[served]
        merged = frequency_weighted_merge(self.block, members, self.load)
        new = expert_output(merged, self.x[tokens], self.block.activation, self.block.limit)
        error = float(np.sum((gate[:, None] * new - old) ** 2))
        value = error / self.scale if self.scale > 0 else 0.0
        self.cache[members] = value
        return value
