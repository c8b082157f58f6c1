"""CUDA graphs of the library's own functions: fewer launches, no host syncs.

Nothing here re-derives any maths. Each class captures a function the teaching code already
has, once, and replays it:

- :class:`GraphedSampler`: ``diffusion.p_sample`` (one step of Algorithm 2), replayed T times:
  1000-step sampling with one launch per step and no host synchronisation.
- :class:`GraphedStep`: any training update (the trainer's Algorithm 1 step: batch draw,
  forward, backward, clipping, AdamW, EMA), replayed every step: small models stop waiting on
  Python.

On a CPU nothing is captured: the same function runs eagerly, which is what the CPU tests
compare with the plain loops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from ..diffusion import GaussianDiffusion

Tensor = torch.Tensor

# torch.compile modes that record CUDA graphs of their own (CUDA-graph trees): they cannot run
# inside a graph captured here.
GRAPHING_COMPILE_MODES = ("reduce-overhead", "max-autotune")


def cuda_capturing(x: torch.Tensor) -> bool:
    """True while ``x``'s CUDA stream is being captured into a graph: no host reads allowed."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def prepare_model(
    model: nn.Module, *, channels_last: bool = False, compile: bool = False, mode: str | None = None
) -> nn.Module:
    """Return the model in channels_last layout and/or compiled; the weights are shared."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model, mode=mode)  # type: ignore[assignment]
    return model


class GraphedSampler:
    """Ancestral sampling (Algorithm 2) of a fixed shape: ``diffusion.p_sample`` captured once
    as a CUDA graph and replayed T times.

    Args:
        diffusion: the process (any mean or variance type :meth:`p_sample` supports).
        model: the network (eval mode is set); may be channels_last or compiled.
        shape: [B, ...] of each sampling call.
        device: where to sample.
        bf16: run the network under bf16 autocast (the update stays in float32).
        use_graph: capture a CUDA graph (CUDA only); False runs the same step eagerly.
        clip_denoised, variance: passed to :meth:`p_sample`.
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        model: nn.Module,
        shape: tuple[int, ...],
        *,
        device: torch.device | str,
        bf16: bool = False,
        use_graph: bool = True,
        clip_denoised: bool = True,
        variance: str | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.diffusion, self.model = diffusion, model
        if isinstance(model, nn.Module):
            model.eval()
        self.T = diffusion.num_timesteps
        self.bf16, self.clip_denoised, self.variance = bf16, clip_denoised, variance
        self.use_graph = use_graph and self.device.type == "cuda"
        self.x = torch.zeros(shape, device=self.device)
        # The step index, updated in place between replays: a checked tensor, so p_sample
        # trusts it and never reads it back.
        self.t = diffusion.step_index(self.T - 1, shape[0], self.device)
        self.graph: torch.cuda.CUDAGraph | None = None

    @torch.no_grad()
    def _step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.diffusion.p_sample(
                self.model,
                self.x,
                self.t,
                clip_denoised=self.clip_denoised,
                variance=self.variance,
            )
        self.x.copy_(out.sample)
        self.t.sub_(1)

    def _capture(self) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm up (cuDNN/cuBLAS choices) before capture
            for _ in range(3):
                self.t.fill_(self.T - 1)
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.t.fill_(self.T - 1)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    @torch.no_grad()
    def sample(self, x_T: Tensor | None = None, *, progress: bool = False) -> Tensor:
        """Run all T steps from ``x_T`` (default: fresh N(0, I)); returns x_0 (a new tensor)."""
        if self.use_graph and self.graph is None:
            self._capture()
        self.x.copy_(torch.randn_like(self.x) if x_T is None else x_T)
        self.t.fill_(self.T - 1)
        for _ in tqdm(range(self.T), desc="DDPM sampling (graphed)", disable=not progress):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        return self.x.clone()


class GraphedStep:
    """A training update ``update()`` captured once as a CUDA graph, then replayed every step.

    A graph replays fixed kernels on fixed memory, so whatever changes between steps must live
    in tensors the update reads (the learning rate of a ``capturable`` optimizer, an EMA
    weight), and the random generators it draws from are registered with the graph, so that
    each replay draws fresh numbers: the same ones the plain loop would draw. Capture needs a
    few warm-up calls (cuDNN and compile choices), which would train the model, so everything
    an update changes (the ``modules``' parameters and buffers, the optimizer's state, the
    ``generators`` and the global RNGs) is saved before them and restored after. On a CPU
    nothing is captured: the same update runs eagerly (after the same warm-up and restore).

    Args:
        update: one step; returns the loss (a tensor whose memory the replays reuse).
        modules: every module the update changes (the model and its EMA copy).
        optimizer: the optimizer the update steps (its state is saved and restored).
        generators: the generators the update draws from (registered with the graph).
        device: where the update runs.
        warmup_steps: update calls before the capture.
    """

    def __init__(
        self,
        update: Callable[[], Tensor],
        *,
        modules: Sequence[nn.Module],
        optimizer: torch.optim.Optimizer,
        generators: Sequence[torch.Generator],
        device: torch.device,
        warmup_steps: int = 3,
    ) -> None:
        self.update, self.modules, self.optimizer = update, list(modules), optimizer
        self.generators, self.device, self.warmup_steps = list(generators), device, warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: Tensor | None = None
        self.ready = False

    def _save_state(self) -> Callable[[], None]:
        """Snapshot everything an update changes; returns the function that puts it back."""
        tensors = [x for m in self.modules for x in (*m.parameters(), *m.buffers())]
        saved = [x.detach().clone() for x in tensors]
        state = self.optimizer.state
        opt = {p: {k: v.clone() for k, v in st.items()} for p, st in state.items()}
        gens = [(g, g.get_state()) for g in self.generators]
        cpu_rng = torch.get_rng_state()
        on_cuda = self.device.type == "cuda"
        cuda_rng = torch.cuda.get_rng_state(self.device) if on_cuda else None

        @torch.no_grad()
        def restore() -> None:
            for x, s in zip(tensors, saved, strict=True):
                x.copy_(s)
            for p, st in state.items():
                for k, v in st.items():  # state created by the warm-up starts from zero
                    if p in opt:
                        v.copy_(opt[p][k])
                    else:
                        v.zero_()
            for g, gen_state in gens:
                g.set_state(gen_state)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)

        return restore

    def _capture(self) -> None:
        restore = self._save_state()
        if self.device.type != "cuda":
            self.update()
            restore()
            self.ready = True
            return
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_steps):
                self.update()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        restore()
        self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated by the graph
        graph = torch.cuda.CUDAGraph()
        for g in self.generators:
            graph.register_generator_state(g)
        with torch.cuda.graph(graph):
            self.loss = self.update()
        self.graph, self.ready = graph, True

    def __call__(self) -> Tensor:
        """One update; returns the loss (on a GPU, memory that the next replay reuses)."""
        if not self.ready:
            self._capture()
        if self.graph is None:
            return self.update()
        self.graph.replay()
        return self.loss  # type: ignore[return-value]
