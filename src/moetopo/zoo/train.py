"""Training and evaluation of one zoo model on CPU (torch is imported here only).

Training is in float32; the shipped weights are BF16, so every score is measured on the
BF16-rounded weights, i.e. on exactly what the pipeline reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from moetopo.zoo.corpus import DOMAINS, Corpus, fixed_windows
from moetopo.zoo.specs import BIAS_UPDATE_SPEED, ModelSpec, make_config, model_class

EVAL_WINDOWS = 64  # per domain and split
EVAL_BATCH = 16


def setup_torch(threads: int = 1) -> None:
    """Few threads (the machine is shared) and deterministic kernels, so rebuilds agree."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def new_model(spec: ModelSpec) -> Any:
    """A freshly initialised model of the spec's real transformers class."""
    torch.manual_seed(spec.seed)
    model = model_class(spec.family)(make_config(spec))
    return model.float()


def _routers(model: Any) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, "e_score_correction_bias")]


class BiasBalancer:
    """DeepSeek-V3's auxiliary-loss-free balancing: nudge each expert's correction bias
    towards the mean load after every step (the HF class does not train it)."""

    def __init__(self, model: Any, speed: float = BIAS_UPDATE_SPEED):
        self.speed = speed
        self.loads: dict[int, torch.Tensor] = {}
        self.routers = _routers(model)
        self.handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]

    def _hook(self, i: int) -> Callable[..., None]:
        def record(module: Any, _inputs: Any, output: Any) -> None:
            indices = output[2].detach().reshape(-1)
            self.loads[i] = torch.bincount(indices, minlength=module.num_experts).float()

        return record

    @torch.no_grad()
    def step(self) -> None:
        for i, router in enumerate(self.routers):
            load = self.loads.get(i)
            if load is not None:
                router.e_score_correction_bias += self.speed * torch.sign(load.mean() - load)
        self.loads.clear()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _lr(step: int, steps: int, peak: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _batch(
    rng: np.random.Generator, corpus: Corpus, domains: tuple[str, ...], batch: int, seq: int
) -> torch.Tensor:
    rows = []
    for b in range(batch):
        stream = corpus.streams[domains[b % len(domains)], "train"]
        start = int(rng.integers(0, stream.size - seq))
        rows.append(stream[start : start + seq])
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def train(
    model: Any,
    corpus: Corpus,
    spec: ModelSpec,
    steps: int,
    lr: float,
    seed: int,
    domains: tuple[str, ...] = DOMAINS,
    log: Callable[[str], None] = print,
) -> list[float]:
    """AdamW with warmup and cosine decay; the family's own aux loss keeps experts alive."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.train()
    uses_aux = spec.family != "deepseek_v3"
    balancer = None if uses_aux else BiasBalancer(model)
    groups = (
        model.optimizer_groups(weight_decay=0.01)  # CT-MoE: S_raw at its own learning rate
        if hasattr(model, "optimizer_groups")
        else [{"params": list(model.parameters()), "weight_decay": 0.01, "lr_scale": 1.0}]
    )
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    losses: list[float] = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr) * group["lr_scale"]
        x = _batch(rng, corpus, domains, spec.batch, spec.seq_len)
        out = model(input_ids=x, labels=x, output_router_logits=uses_aux)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if balancer is not None:
            balancer.step()
        losses.append(float(out.loss.detach()))
        if step % 100 == 0 or step == steps - 1:
            log(f"  step {step:4d}/{steps} loss {losses[-1]:.4f}")
    if balancer is not None:
        balancer.close()
    return losses


def round_to_bf16(model: Any) -> None:
    """Make the float32 weights exactly the BF16 values that will be saved."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


@torch.no_grad()
def evaluate(model: Any, corpus: Corpus, seq_len: int) -> dict[str, dict[str, float]]:
    """Mean next-byte cross-entropy (nats/byte) per split and domain on fixed windows."""
    model.eval()
    result: dict[str, dict[str, float]] = {}
    for split in ("train", "heldout"):
        result[split] = {}
        for domain in DOMAINS:
            windows = torch.from_numpy(
                fixed_windows(corpus.streams[domain, split], EVAL_WINDOWS, seq_len)
            )
            total, count = 0.0, 0
            for i in range(0, len(windows), EVAL_BATCH):
                x = windows[i : i + EVAL_BATCH]
                logits = model(input_ids=x).logits[:, :-1].float()
                target = x[:, 1:]
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
                )
                total += float(loss)
                count += target.numel()
            result[split][domain] = total / count
    return result
