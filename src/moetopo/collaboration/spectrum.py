"""What a row-stochastic S says on its own: how spread its rows are, its eigenvalues, and
where a walk along it settles.

The eigenvalues come from a general (non-symmetric) solver: S is row-stochastic, not
symmetric, and a symmetric solver reads one triangle only, which is how the CT-MoE
reference code reported a top eigenvalue of 1.024 for matrices whose top eigenvalue is
exactly 1 (S 1 = 1). The stationary distribution is the left Perron vector (π S = π, Σ π
= 1), checked against a power iteration of the lazy walk (I + S) / 2, which has the same
stationary distribution and converges even when S is periodic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# eigenvalues this close to 1 count as 1 (S's own eigenvalue is 1 to rounding, ~1e-15)
UNIT_TOLERANCE = 1e-9
POWER_TOLERANCE = 1e-14
POWER_MAX_STEPS = 200_000


def check_stochastic(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"S must be square, got shape {s.shape}")
    if (s < 0).any() or not np.allclose(s.sum(axis=1), 1.0, rtol=0, atol=1e-12):
        raise ValueError("S must be row-stochastic (non-negative rows summing to 1)")
    return s


def row_entropy(s: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row; log(E - 1) for a uniform off-diagonal row."""
    s = check_stochastic(s)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(s > 0, -s * np.log(s), 0.0)
    return terms.sum(axis=1)


def entropy_ceiling(n: int) -> float:
    """The largest row entropy with a zero diagonal: log(E - 1)."""
    return float(np.log(n - 1))


def max_off_diagonal(s: np.ndarray) -> float:
    s = check_stochastic(s)
    return float(s[~np.eye(len(s), dtype=bool)].max())


def eigenvalues(s: np.ndarray) -> np.ndarray:
    """All eigenvalues of S (complex), by decreasing real part, then decreasing imaginary."""
    values = np.linalg.eigvals(check_stochastic(s))
    return values[np.lexsort((-values.imag, -values.real))]


@dataclass(frozen=True)
class Stationary:
    """π (π S = π, Σ π = 1), how many eigenvalues are 1 (more than one: π is not unique,
    the walk has several closed classes, and π is NaN), and the power iteration's
    agreement."""

    distribution: np.ndarray
    unit_multiplicity: int
    power_gap: float  # max |π - π_power|
    power_steps: int


def stationary(s: np.ndarray) -> Stationary:
    """The left Perron vector of S, beside a power iteration of the lazy walk from uniform;
    NaN where 1 is not a simple eigenvalue (several closed classes: no unique π)."""
    s = check_stochastic(s)
    values, vectors = np.linalg.eig(s.T)
    unit = np.abs(values - 1.0) < UNIT_TOLERANCE
    if unit.sum() != 1:
        return Stationary(np.full(len(s), np.nan), int(unit.sum()), float("nan"), 0)
    best = int(np.argmin(np.abs(values - 1.0)))
    pi = np.real(vectors[:, best])
    pi = pi / pi.sum()
    power, steps = power_iteration(s)
    return Stationary(pi, int(unit.sum()), float(np.abs(pi - power).max()), steps)


def power_iteration(s: np.ndarray) -> tuple[np.ndarray, int]:
    """π from uniform by π ← π (I + S) / 2 until it moves less than POWER_TOLERANCE."""
    s = check_stochastic(s)
    lazy = 0.5 * (np.eye(len(s)) + s)
    pi = np.full(len(s), 1.0 / len(s))
    for step in range(1, POWER_MAX_STEPS + 1):
        nxt = pi @ lazy
        if np.abs(nxt - pi).max() < POWER_TOLERANCE:
            return nxt / nxt.sum(), step
        pi = nxt
    return pi / pi.sum(), POWER_MAX_STEPS


def second_modulus(values: np.ndarray) -> float:
    """|λ2|: the largest modulus after the unit eigenvalue (1 - |λ2| is the spectral gap)."""
    moduli = np.sort(np.abs(values))[::-1]
    return float(moduli[1]) if len(moduli) > 1 else float("nan")


def summary(s: np.ndarray) -> dict:
    """Every figure of one S (scalars, and lists of eigenvalues and π)."""
    s = check_stochastic(s)
    n = len(s)
    entropy = row_entropy(s)
    values = eigenvalues(s)
    pi = stationary(s)
    return {
        "n_experts": n,
        "entropy_mean": float(entropy.mean()),
        "entropy_min": float(entropy.min()),
        "entropy_ceiling": entropy_ceiling(n),
        "max_offdiag": max_off_diagonal(s),
        "uniform_offdiag": 1.0 / (n - 1),
        "top_eigenvalue": float(values[0].real),
        "second_modulus": second_modulus(values),
        "unit_multiplicity": pi.unit_multiplicity,
        "eigenvalues_real": values.real.tolist(),
        "eigenvalues_imag": values.imag.tolist(),
        "stationary": pi.distribution.tolist(),
        "stationary_power_gap": pi.power_gap,
        "power_steps": pi.power_steps,
        "row_sum_error": float(np.abs(s.sum(axis=1) - 1.0).max()),
        "asymmetry": float(np.linalg.norm(s - s.T) / np.linalg.norm(s)),
    }
