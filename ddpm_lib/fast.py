"""The GPU fast path: the same maths as ``diffusion`` and ``samplers``, fewer launches, no syncs.

- ``prepare_model``: channels_last memory layout and optional ``torch.compile``.
- ``ddpm_step``: one ancestral step (Algorithm 2) written with on-device coefficient tables,
  indexed by an on-device step counter, so it can be captured in a CUDA graph.
- ``GraphedSampler``: captures ``ddpm_step`` once in a CUDA graph and replays it T times:
  1000-step sampling with no host synchronisation and one launch per step. On a CPU it runs the
  same step eagerly (the tests compare it with ``GaussianDiffusion.p_sample``).
- ``GraphedTrainStep``: the whole training update of ``train.Trainer`` (batch draw, forward,
  backward, clipping, AdamW, EMA) captured as one CUDA graph: one launch per step, so small
  models stop waiting on Python. On a CPU the same update runs eagerly (tests compare it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from .diffusion import GaussianDiffusion, learned_range_log_variance

if TYPE_CHECKING:
    from .train import Trainer

Tensor = torch.Tensor


def prepare_model(
    model: nn.Module, channels_last: bool = False, compile: bool = False, mode: str | None = None
) -> nn.Module:
    """Return the model in channels_last layout and/or compiled; the weights are shared."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model, mode=mode)  # type: ignore[assignment]
    return model


@dataclass
class StepTables:
    """Per-step coefficients of Algorithm 2 on the sampling device, each of shape [T]."""

    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    sigma: Tensor  # reverse std; 0 at code index 0 (no noise on the last step)
    # learned_range only: the two ends of log σ_t² (log β_t, log β̃_t) and the 0/1 noise mask
    learned_range: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def build(
        cls, diffusion: GaussianDiffusion, device: torch.device, variance: str | None = None
    ) -> StepTables:
        if diffusion.model_mean_type != "eps":
            raise ValueError(
                "the fast sampler is written for ε-prediction; use diffusion.sample for "
                f"model_mean_type={diffusion.model_mean_type!r}"
            )
        var_type = variance or diffusion.model_var_type
        if var_type == "learned_range" and not diffusion.learned_variance:
            raise ValueError(
                "variance='learned_range' needs a diffusion with model_var_type='learned_range'"
            )
        var = diffusion.posterior_variance if var_type == "fixed_small" else diffusion.betas
        sigma = var.sqrt().clone()
        sigma[0] = 0.0

        def dev(x: Tensor) -> Tensor:
            return x.to(device=device, dtype=torch.float32)

        learned = None
        if var_type == "learned_range":
            nonzero = torch.ones_like(sigma)
            nonzero[0] = 0.0
            ends = (diffusion.log_betas, diffusion.posterior_log_variance_clipped)
            learned = (dev(ends[0]), dev(ends[1]), dev(nonzero))
        return cls(
            dev(diffusion.sqrt_recip_alphas_cumprod),
            dev(diffusion.sqrt_recipm1_alphas_cumprod),
            dev(diffusion.posterior_mean_coef1),
            dev(diffusion.posterior_mean_coef2),
            dev(sigma),
            learned,
        )


def ddpm_step(
    model: nn.Module, x: Tensor, i: Tensor, tables: StepTables, noise: Tensor, clip: bool = True
) -> Tensor:
    """x_t → x_{t-1} = μ̃(x̂_0, x_t) + σ_t z with x̂_0 = x_t/√ᾱ_t - √(1/ᾱ_t - 1) ε_θ (Chapter 4).

    ``i`` is a 0-d int64 tensor (code index, on x's device): nothing leaves the device. With
    learned_range tables the network returns [ε̂ | ν] and σ_t² = exp(½(1+ν) log β_t +
    ½(1-ν) log β̃_t) (``diffusion.learned_range_log_variance``).
    """

    def at(table: Tensor) -> Tensor:
        # index_select, not table[i]: a 0-d tensor index would be read back with .item().
        return table.index_select(0, i.reshape(1)).reshape([1] * x.ndim)

    eps = model(x, i.expand(x.shape[0])).float()
    if tables.learned_range is not None:
        eps, nu = eps.chunk(2, dim=1)
    x0 = at(tables.sqrt_recip_alphas_cumprod) * x - at(tables.sqrt_recipm1_alphas_cumprod) * eps
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    mean = at(tables.posterior_mean_coef1) * x0 + at(tables.posterior_mean_coef2) * x
    if tables.learned_range is None:
        return mean + at(tables.sigma) * noise
    log_beta, log_posterior_variance, nonzero = tables.learned_range
    log_var = learned_range_log_variance(nu, at(log_beta), at(log_posterior_variance))
    return mean + at(nonzero) * (0.5 * log_var).exp() * noise


class GraphedSampler:
    """Ancestral sampling of a fixed shape, as one CUDA graph replayed T times.

    Args:
        diffusion: the schedule (ε-prediction).
        model: the network (eval mode is set); may be channels_last or compiled.
        shape: [B, C, H, W] of each sampling call.
        bf16: run the network under bf16 autocast (the update stays float32).
        use_graph: capture a CUDA graph (CUDA only); False runs the same step eagerly.
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        model: nn.Module,
        shape: tuple[int, ...],
        device: torch.device | str,
        bf16: bool = False,
        use_graph: bool = True,
        clip: bool = True,
        variance: str | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval() if isinstance(model, nn.Module) else model
        self.T = diffusion.num_timesteps
        self.tables = StepTables.build(diffusion, self.device, variance)
        self.bf16, self.clip = bf16, clip
        self.use_graph = use_graph and self.device.type == "cuda"
        self.x = torch.zeros(shape, device=self.device)
        self.k = torch.zeros((), dtype=torch.long, device=self.device)  # steps taken
        self.graph: torch.cuda.CUDAGraph | None = None

    @torch.no_grad()
    def _step(self) -> None:
        i = self.T - 1 - self.k
        noise = torch.randn_like(self.x)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            x = ddpm_step(self.model, self.x, i, self.tables, noise, self.clip)
        self.x.copy_(x)
        self.k.add_(1)

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up (cuDNN/cuBLAS choices) before capture
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    @torch.no_grad()
    def sample(self, x_T: Tensor | None = None, progress: bool = False) -> Tensor:
        """Run all T steps from ``x_T`` (default: fresh N(0, I)); returns x_0 (a new tensor)."""
        if self.use_graph and self.graph is None:
            self._capture()
        self.x.copy_(torch.randn_like(self.x) if x_T is None else x_T)
        self.k.zero_()
        for _ in tqdm(range(self.T), desc="DDPM sampling (graphed)", disable=not progress):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        return self.x.clone()


class GraphedTrainStep:
    """``Trainer._update`` captured once as a CUDA graph, then replayed every step.

    A graph replays fixed kernels on fixed memory, so what changes between steps lives in
    tensors the graph reads: the learning rate (the optimizer is built ``capturable``) and the
    EMA weight 1 - decay. The batch indices, t and ε come from the trainer's generators, which
    are registered with the graph so that each replay draws fresh numbers, the same ones the
    plain loop would draw. The warm-up steps that capture needs (cuDNN and compile choices)
    would train the model, so the trainer's weights, EMA, optimizer and generator states are
    saved before them and restored after. On a CPU nothing is captured: the same update runs
    eagerly (after the same warm-up and restore), which is what the tests compare.
    """

    def __init__(self, trainer: Trainer, warmup_steps: int = 3) -> None:
        self.trainer = trainer
        self.warmup_steps = warmup_steps
        device = trainer.device
        self.lr = torch.tensor(trainer.config.lr, dtype=torch.float32, device=device)
        self.ema_weight = torch.zeros((), dtype=torch.float32, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: Tensor | None = None
        self.ready = False

    def _save_state(self) -> Callable[[], None]:
        """Snapshot everything an update changes; returns the function that puts it back."""
        t = self.trainer
        tensors = [*t.model.parameters(), *t.model.buffers(), *t.ema.parameters()]
        saved = [x.detach().clone() for x in tensors]
        opt = {p: {k: v.clone() for k, v in st.items()} for p, st in t.optimizer.state.items()}
        gens = [(g, g.get_state()) for g in (t.data_gen, t.noise_gen)]
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(t.device) if t.device.type == "cuda" else None

        @torch.no_grad()
        def restore() -> None:
            for x, s in zip(tensors, saved, strict=True):
                x.copy_(s)
            for p, st in t.optimizer.state.items():
                for k, v in st.items():  # state created by the warm-up starts from zero
                    if p in opt:
                        v.copy_(opt[p][k])
                    else:
                        v.zero_()
            for g, state in gens:
                g.set_state(state)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, t.device)

        return restore

    def _capture(self) -> None:
        t = self.trainer
        for group in t.optimizer.param_groups:
            group["lr"] = self.lr
        restore = self._save_state()
        if t.device.type != "cuda":
            t._update(self.ema_weight, cache_casts=False)
            restore()
            self.ready = True
            return
        stream = torch.cuda.Stream(t.device)
        stream.wait_stream(torch.cuda.current_stream(t.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_steps):
                t._update(self.ema_weight, cache_casts=False)
        torch.cuda.current_stream(t.device).wait_stream(stream)
        restore()
        t.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated by the graph
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(t.data_gen)
        graph.register_generator_state(t.noise_gen)
        with torch.cuda.graph(graph):
            self.loss = t._update(self.ema_weight, cache_casts=False)
        self.graph, self.ready = graph, True

    def __call__(self) -> Tensor:
        """One update at the trainer's current step; returns the loss (memory reused)."""
        t = self.trainer
        if not self.ready:
            self._capture()
        self.lr.fill_(t._lr())
        self.ema_weight.fill_(1.0 - t.ema_decay())
        if self.graph is None:
            return t._update(self.ema_weight, cache_casts=False)
        self.graph.replay()
        assert self.loss is not None
        return self.loss
