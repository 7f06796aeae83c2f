"""The toy MoE of "Sparsity and Superposition in Mixture of Experts", as checkpoints.

Inputs are n features, each present with probability 1 - S (feature sparsity S) at a
value uniform in [0, 1]; expert e holds W_e [n, m] and b_e [n] and outputs
ReLU(x W_e W_e^T + b_e); a softmax gate [E, n] picks the top k experts, whose outputs
are mixed with the gate probabilities renormalised over the k. Training minimises the
importance-weighted squared reconstruction error (importance 0.9^i, as Elhage et al.'s
toy models weight features) plus the switch load-balancing loss at 0.01, as the study's
code does, with AdamW at 1e-3, in float32 on the CPU.

The grid crosses feature sparsity S with the active fraction k/E as the study varies it:
one active expert out of E = 2, 4, 8 or 16, so every token meets the same m hidden
dimensions and only the share of the network it uses changes (raising k instead would
also raise the capacity a token gets). 4 x 4 models of n = 20 features and m = 5 hidden
dimensions, 3000 steps of 512 inputs as the study trains them; the points of one expert
count train side by side in one process. Each is saved as the ``toy_moe`` family
reads it (moetopo/families/toy_moe.toml), with its gate logits and inputs captured on
4096 held-out inputs that hold a feature, so the routing stage weighs experts by use.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

GRID_SPARSITY = (0.5, 0.8, 0.9, 0.97)
GRID_EXPERTS = (2, 4, 8, 16)
IMPORTANCE_DECAY = 0.9
BALANCE_COEF = 0.01
HELDOUT = 4096
CAPTURED_INPUTS = 2048
GRID_FILE = "grid.json"


@dataclass(frozen=True)
class ToyPoint:
    """One toy model: its grid coordinates and training recipe."""

    feature_sparsity: float
    n_experts: int
    top_k: int = 1
    n_features: int = 20
    n_hidden: int = 5
    steps: int = 3000
    batch: int = 512
    lr: float = 1e-3
    seed: int = 0

    @property
    def id(self) -> str:
        return f"toy-s{round(self.feature_sparsity * 100):02d}-e{self.n_experts}k{self.top_k}"


def toy_grid(**recipe) -> list[ToyPoint]:
    """Every (feature sparsity, expert count) of the grid, ``recipe`` overriding defaults."""
    return [ToyPoint(s, e, **recipe) for s in GRID_SPARSITY for e in GRID_EXPERTS]


def importance(n_features: int) -> np.ndarray:
    return IMPORTANCE_DECAY ** np.arange(n_features, dtype=np.float32)


def sparse_features(point: ToyPoint, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` inputs: each feature present with probability 1 - S, uniform in [0, 1]."""
    shape = (n, point.n_features)
    present = rng.random(shape) >= point.feature_sparsity
    return np.where(present, rng.random(shape), 0.0).astype(np.float32)


def train_points(points: list[ToyPoint]) -> list[tuple[dict[str, np.ndarray], float]]:
    """(weights W [E, n, m], b [E, n], gate [E, n]; held-out loss) of each point, trained
    side by side: one stacked model whose summed loss gives each its own gradients (AdamW
    is elementwise), so a point trains as it would alone, from its own seeds."""
    import torch

    first = points[0]
    if any(_shape(p) != _shape(first) for p in points):
        raise ValueError("points trained together must share sizes and recipe")
    model = _StackedToyMoE(points)
    optimiser = torch.optim.AdamW(model.parameters(), lr=first.lr)
    weight = torch.from_numpy(importance(first.n_features))
    rngs = [np.random.default_rng(_seed(p)) for p in points]
    for _ in range(first.steps):
        x = torch.from_numpy(
            np.stack([sparse_features(p, p.batch, r) for p, r in zip(points, rngs, strict=True)])
        )
        out, balance = model(x)
        loss = (weight * (x - out) ** 2).mean(dim=1).sum() + BALANCE_COEF * balance.sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    heldout = np.stack([sparse_features(p, HELDOUT, np.random.default_rng(10_000)) for p in points])
    with torch.no_grad():
        x = torch.from_numpy(heldout)
        out, _ = model(x)
        scores = (weight * (x - out) ** 2).mean(dim=1).sum(dim=-1).tolist()
    params = {k: v.detach().numpy() for k, v in model.named_parameters()}
    return [({k: v[i].copy() for k, v in params.items()}, scores[i]) for i in range(len(points))]


def _shape(point: ToyPoint) -> ToyPoint:
    """What points trained side by side share: all but sparsity, top-k and seed."""
    return replace(point, feature_sparsity=0.0, top_k=1, seed=0)


def _seed(point: ToyPoint) -> list[int]:
    """A point's own seed sequence: the same whichever points train beside it."""
    return [point.seed, round(point.feature_sparsity * 1000), point.top_k, point.n_experts]


def _StackedToyMoE(points: list[ToyPoint]):
    """Toy MoEs stacked on a leading axis, as a torch module (built here so that torch is
    imported only to train). Each point's initial weights come from its own seed."""
    import torch
    from torch import nn

    first = points[0]
    e, n, m = first.n_experts, first.n_features, first.n_hidden

    def initial(point: ToyPoint) -> tuple:
        gen = torch.Generator().manual_seed(
            int(np.random.SeedSequence(_seed(point)).generate_state(1)[0])
        )
        # Xavier-normal, as the study initialises W_e and the gate
        w = torch.randn(e, n, m, generator=gen) * (2.0 / (n * m + e * m)) ** 0.5
        gate = torch.randn(e, n, generator=gen) * (2.0 / (e + n)) ** 0.5
        return w, gate

    class StackedToyMoE(nn.Module):
        def __init__(self):
            super().__init__()
            w, gate = zip(*map(initial, points), strict=True)
            self.W = nn.Parameter(torch.stack(w))
            self.b = nn.Parameter(torch.zeros(len(points), e, n))
            self.gate = nn.Parameter(torch.stack(gate))
            self.k = torch.tensor([p.top_k for p in points]).view(-1, 1, 1)

        def forward(self, x):  # x [P, B, n]
            probs = torch.softmax(torch.einsum("pbf,pef->pbe", x, self.gate), dim=-1)
            rank = probs.argsort(dim=-1, descending=True).argsort(dim=-1)
            chosen = (rank < self.k).to(probs.dtype)
            mix = probs * chosen / (probs * chosen).sum(dim=-1, keepdim=True)
            hidden = torch.einsum("pbf,pefh->pbeh", x, self.W)
            outs = torch.relu(torch.einsum("pbeh,pefh->pbef", hidden, self.W) + self.b[:, None])
            balance = e * (chosen.mean(dim=1) * probs.mean(dim=1)).sum(dim=-1)
            return torch.einsum("pbe,pbef->pbf", mix, outs), balance

    return StackedToyMoE()


def save_point(point: ToyPoint, arrays: dict[str, np.ndarray], model_dir: Path) -> None:
    """model.safetensors (toy_moe names), config.json and router_logits.npz: gate logits
    of held-out inputs and the first of those inputs, as ``moetopo.capture`` writes them.
    Inputs with no feature present are left out: they carry nothing to represent, and
    their gate logits are all zero, a tie the top-k breaks by expert index (at S = 0.97
    they are 54% of inputs and would all count as the first expert's load)."""
    from safetensors.numpy import save_file

    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        "features.weight": np.eye(point.n_features, dtype=np.float32),
        "layers.0.gate.weight": arrays["gate"],
    }
    for e in range(point.n_experts):
        tensors[f"layers.0.experts.{e}.weight"] = np.ascontiguousarray(arrays["W"][e])
        tensors[f"layers.0.experts.{e}.bias"] = np.ascontiguousarray(arrays["b"][e])
    save_file(tensors, str(model_dir / "model.safetensors"))
    config = {
        "architectures": ["ToyMoE"],
        "model_type": "toy_moe",
        "num_hidden_layers": 1,
        "hidden_size": point.n_features,
        "num_experts": point.n_experts,
        "top_k": point.top_k,
        "feature_sparsity": point.feature_sparsity,
        "importance_decay": IMPORTANCE_DECAY,
        "recipe": asdict(point),
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    x = sparse_features(point, 4 * HELDOUT, np.random.default_rng(20_000))
    x = x[x.any(axis=1)][:HELDOUT]
    np.savez_compressed(
        model_dir / "router_logits.npz",
        layer_0=x @ arrays["gate"].T,
        inputs_0=x[:CAPTURED_INPUTS],
        input_positions=np.arange(CAPTURED_INPUTS),
        meta=np.array(json.dumps({"source": "toy feature distribution", "layers": [0]})),
    )


def build_toy(points: list[ToyPoint], out_dir: Path, root: Path, log=print) -> list[dict]:
    """Train and save every point under ``out_dir``; write its models.tsv, an empty
    pairs.tsv and grid.json (each point's coordinates and held-out loss)."""
    from moetopo.zoo.train import setup_torch

    setup_torch(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    groups: dict[ToyPoint, list[ToyPoint]] = {}
    for point in points:
        groups.setdefault(_shape(point), []).append(point)
    trained = {}
    for group in groups.values():
        trained.update(zip(group, train_points(group), strict=True))
    seconds = time.perf_counter() - start
    records = []
    for point in points:
        arrays, score = trained[point]
        save_point(point, arrays, out_dir / point.id)
        records.append({"id": point.id, **asdict(point), "score": score})
        log(f"{point.id}: held-out loss {score:.5f}")
    log(f"{len(points)} toy models trained in {seconds:.0f} s")
    (out_dir / GRID_FILE).write_text(json.dumps({"models": records}, indent=1) + "\n")
    _write_sheets(records, out_dir, root)
    return records


def _write_sheets(records: list[dict], out_dir: Path, root: Path) -> None:
    """Paths relative to ``root`` (where snakemake runs) when the zoo lies under it."""
    out = out_dir.resolve()
    rel = out.relative_to(root.resolve()).as_posix() if out.is_relative_to(root.resolve()) else out
    lines = ["model\tpath\tscore\tsteps\tfamily\trouting"]
    for r in records:
        path = f"{rel}/{r['id']}"
        lines.append(
            f"{r['id']}\t{path}\t{r['score']:.6f}\t{r['steps']}\ttoy_moe\t{path}/router_logits.npz"
        )
    (out_dir / "models.tsv").write_text("\n".join(lines) + "\n")
    (out_dir / "pairs.tsv").write_text("base\ttuned\n")
