"""Which domain an expert serves: (f_a - f_b) / (f_a + f_b), f_d the share of domain d's
tokens that select the expert. +1: only domain a's tokens reach it, -1: only b's, 0: both
alike (the shares are per domain, so a domain's size does not tilt it)."""

from __future__ import annotations

import numpy as np


def domain_shares(selected: np.ndarray) -> np.ndarray:
    """[E]: the share of tokens whose selection ([tokens, E] booleans) holds each expert."""
    selected = np.asarray(selected, dtype=bool)
    if not len(selected):
        return np.full(selected.shape[1], np.nan)
    return selected.mean(axis=0)


def specialisation(share_a: np.ndarray, share_b: np.ndarray) -> np.ndarray:
    """(f_a - f_b) / (f_a + f_b) per expert; NaN for an expert neither domain selects."""
    share_a, share_b = np.asarray(share_a, float), np.asarray(share_b, float)
    total = share_a + share_b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (share_a - share_b) / total, np.nan)
