"""One training step captured as a CUDA graph and replayed: one launch instead of hundreds.

A small GAN's step is a few hundred small kernels, and launching them one by one from Python takes
longer than running them (docs/training.md, "Why CUDA graphs"). `GraphedStep` runs the first steps
eagerly on a side stream (cuDNN autotuning, the optimisers' state), then captures one whole update
over static input buffers; every later step copies its inputs into those buffers and replays it.
A step that changes shape on the host's say (augmentation switched on or off) names a `variant`, and
a new variant is captured afresh. Disabled (CPU, fp16, DDP), it simply calls the update.
"""

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

import torch

WARMUP_STEPS = 3  # eager steps before a graph is captured (PyTorch's docs use three)

Update = Callable[..., dict[str, torch.Tensor]]  # update(*inputs, measure=...) -> the figures to log


@contextmanager
def _on_side_stream(stream: torch.cuda.Stream) -> Iterator[None]:
    """Run the block on `stream`, ordered after and before the current stream's work."""
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream().wait_stream(stream)


class GraphedStep:
    """Runs `update` eagerly, or, when enabled and warmed up, as a replay of its captured graph."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.enabled = enabled
        self._stream = torch.cuda.Stream(device) if enabled else None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[torch.Tensor, ...] = ()  # the graph's input buffers
        self._outputs: dict[str, torch.Tensor] = {}  # the figures each replay writes
        self._eager_steps = 0  # since the last drop: a graph is captured after a few
        self._variant: Hashable = None  # which form of the update the graph holds

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(
        self, update: Update, inputs: tuple[torch.Tensor, ...], measure: bool, variant: Hashable = None
    ) -> dict:
        """One step on `inputs`; with `measure`, the figures to log (tensors), else {}. `variant`
        names the form `update` takes now: a graph of another form is dropped and captured again."""
        if variant != self._variant:
            self.drop()
            self._variant = variant
        if self._graph is not None:
            for buffer, value in zip(self._inputs, inputs, strict=True):
                buffer.copy_(value)
            self._graph.replay()
            return {k: v.clone() for k, v in self._outputs.items()} if measure else {}
        if not self.enabled:
            return update(*inputs, measure=measure)
        with _on_side_stream(self._stream):
            figures = update(*inputs, measure=measure)
        self._eager_steps += 1
        if self._eager_steps >= WARMUP_STEPS:
            self._capture(update, inputs)
        return figures

    def _capture(self, update: Update, inputs: tuple[torch.Tensor, ...]) -> None:
        """Record one whole update (with its figures) as a CUDA graph over copies of `inputs`."""
        self._inputs = tuple(x.clone(memory_format=torch.preserve_format) for x in inputs)
        self._graph = torch.cuda.CUDAGraph()
        # thread_local: a CUDA call from another thread (a Prefect worker, say) cannot spoil the capture.
        with torch.cuda.graph(self._graph, stream=self._stream, capture_error_mode="thread_local"):
            self._outputs = update(*self._inputs, measure=True)

    def drop(self) -> None:
        """Forget the captured step (the optimisers' state tensors are about to be replaced)."""
        self._graph, self._eager_steps = None, 0
