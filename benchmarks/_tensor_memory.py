"""Tensor-memory accounting for one training step, per component (pure torch: both virtualenvs import it).

:class:`TensorMeter` is a ``TorchDispatchMode``: every tensor storage that an operator creates inside
it is counted as live until its storage is freed (a weakref on the storage), and is charged to the
*phase* that was running when it was made (``with meter.phase("unet")``, or the hooks of
:meth:`TensorMeter.tag_module` / :meth:`TensorMeter.wrap`). It reports the peak of live bytes made
inside the step and, at that instant, which phases had made them; and the same breakdown at marked
instants (``meter.mark("end of forward")``: what the forward keeps for backward, reference images
included). Storages made before the meter started (weights, the optimizer's moments after the first
step) are not counted: the numbers are what one step adds. Not counted: allocations inside kernels
that never become tensors (oneDNN scratch buffers) and allocator slack, which RSS sees.

:func:`instrument` tags a focusnfix trainer's pieces (UNet calls, VAE decode, reward and mask, backward,
optimizer) with phases: ``step_memory.py`` and ``trl_worker.py --side ours --meter`` meter our step with it.
"""
from __future__ import annotations

import contextlib
import functools
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMeter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[int, str]] = {}  # storage key -> (bytes, phase that made it)
        self.by_phase: dict[str, int] = {}
        self.total = self.peak = 0
        self.peak_by_phase: dict[str, int] = {}
        self.peak_at = ""
        self.marks: dict[str, dict] = {}
        self.made: dict[str, int] = {}  # bytes ever made per phase (traffic, not residency)
        self._stack = ["other"]
        self._refs: dict[int, weakref.ref] = {}
        self.describe: dict | None = None  # set to {} to record (op, shape, dtype) of every live storage
        self.made_by_op: dict[tuple[str, str], int] = {}  # (phase, op) -> bytes made, when describing

    # -- phases -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str):
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()

    @property
    def current(self) -> str:
        return self._stack[-1]

    def tag_module(self, module: torch.nn.Module, name: str, grad_name: str | None = None):
        """Charge what ``module``'s forward makes to ``name`` (``grad_name`` when gradients are on)."""
        def pre(mod, args):
            self._stack.append(grad_name if grad_name and torch.is_grad_enabled() else name)

        def post(mod, args, out):
            self._stack.pop()

        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def wrap(self, fn, name: str, grad_name: str | None = None):
        """``fn`` with its allocations charged to ``name`` (``grad_name`` when gradients are on)."""
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with self.phase(grad_name if grad_name and torch.is_grad_enabled() else name):
                return fn(*args, **kwargs)
        return inner

    def mark(self, label: str) -> None:
        """Record the live bytes now, by phase."""
        self.marks[label] = {"total": self.total, "by_phase": {k: v for k, v in self.by_phase.items() if v}}

    # -- accounting ---------------------------------------------------------------------------------
    def _add(self, t: torch.Tensor, func=None) -> None:
        try:
            st = t.untyped_storage()
        except (NotImplementedError, RuntimeError):
            return
        nbytes = st.nbytes()
        if nbytes == 0 or t.device.type == "meta":
            return
        key = st._cdata
        if key in self.live:
            return
        phase = self.current
        self.live[key] = (nbytes, phase)
        if self.describe is not None:
            self.describe[key] = (str(func), tuple(t.shape), str(t.dtype))
            op = (phase, str(func))
            self.made_by_op[op] = self.made_by_op.get(op, 0) + nbytes
        self.by_phase[phase] = self.by_phase.get(phase, 0) + nbytes
        self.made[phase] = self.made.get(phase, 0) + nbytes
        self.total += nbytes
        if self.total > self.peak:
            self.peak, self.peak_at = self.total, phase
            self.peak_by_phase = {k: v for k, v in self.by_phase.items() if v}
        self._refs[key] = weakref.ref(st, functools.partial(self._free, key))

    def _free(self, key: int, _ref=None) -> None:
        entry = self.live.pop(key, None)
        self._refs.pop(key, None)
        if entry is None:
            return
        nbytes, phase = entry
        self.by_phase[phase] -= nbytes
        self.total -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        fresh = out if len(returns) != 1 else (out,)
        if isinstance(out, tuple) and len(returns) == len(out):  # skip views and in-place results (aliases)
            fresh = [o for o, r in zip(out, returns) if r.alias_info is None]
        elif len(returns) == 1 and returns[0].alias_info is not None:
            fresh = ()
        for t in tree_flatten(fresh)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t, func)
        return out

    def report(self) -> dict:
        mib = lambda v: round(v / 2**20, 3)  # noqa: E731
        return {"peak_mib": mib(self.peak), "peak_during": self.peak_at,
                "at_peak_mib": {k: mib(v) for k, v in sorted(self.peak_by_phase.items(), key=lambda kv: -kv[1])},
                "marks_mib": {label: {"total": mib(m["total"]),
                                      **{k: mib(v) for k, v in sorted(m["by_phase"].items(), key=lambda kv: -kv[1])}}
                              for label, m in self.marks.items()},
                "made_mib": {k: mib(v) for k, v in sorted(self.made.items(), key=lambda kv: -kv[1])}}


def meter_backward_and_optimizer(meter, forward, optimizer, state: dict):
    """Wrap a step's last forward call and ``optimizer.step`` so the meter charges what follows the forward
    to backward and the update to the optimizer (shared by step_memory.py and trl_worker.py); returns the
    wrapped forward."""
    def metered_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        meter.mark("end of forward (kept for backward)")
        meter._stack[0] = "backward (grads, temporaries)"
        state["backward"] = True
        return out

    opt_step = optimizer.step

    def metered_opt_step(*args, **kwargs):
        state["backward"] = False
        meter.mark("after backward")
        with meter.phase("optimizer"):
            return opt_step(*args, **kwargs)

    optimizer.step = metered_opt_step
    return metered_forward


# -- our trainer's step, charged to components (step_memory.py; trl_worker.py --side ours --meter) ------------
class _Proxy:
    """``reward`` with its calls charged to a phase; every other attribute is the reward's."""

    def __init__(self, reward, meter):
        self._reward, self._meter = reward, meter

    def __getattr__(self, name):
        value = getattr(self._reward, name)
        if name == "problem_mask" and callable(value):
            return self._meter.wrap(value, "reward + mask (no grad)", "reward (grad)")
        return value

    def __call__(self, *args, **kwargs):
        return self._meter.wrap(self._reward, "reward + mask (no grad)", "reward (grad)")(*args, **kwargs)


def instrument(trainer, meter):
    """Tag the trainer's pieces with phases; return a function that runs one metered step."""
    bb, method = trainer.backbone, trainer.method
    state = {"backward": False}
    model_fn, decode = bb.model_fn, bb.decode

    def unet(*args, **kwargs):
        name = "UNet recompute (backward)" if state["backward"] else (
            "UNet K steps (grad)" if torch.is_grad_enabled() else "UNet no grad (prefix, I0)")
        with meter.phase(name):
            return model_fn(*args, **kwargs)

    def vae(*args, **kwargs):
        name = "VAE recompute (backward)" if state["backward"] else (
            "VAE decode (grad)" if torch.is_grad_enabled() else "VAE decode (no grad, I0)")
        with meter.phase(name):
            return decode(*args, **kwargs)

    bb.model_fn, bb.decode = unet, vae
    vae_decode = bb.vae.decode  # what a checkpointed decode recomputes in backward (outside ``bb.decode``)

    def vae_inner(*args, **kwargs):
        if not state["backward"]:
            return vae_decode(*args, **kwargs)
        with meter.phase("VAE recompute (backward)"):
            return vae_decode(*args, **kwargs)

    bb.vae.decode = vae_inner
    method.reward = _Proxy(method.reward, meter)
    loss = meter_backward_and_optimizer(meter, method.loss, trainer.optimizer, state)

    def metered_loss(batch):
        meter._stack[0] = "forward: sampler, constraint, other"
        return loss(batch)

    method.loss = metered_loss

    def step():
        with meter:
            trainer.train_step()
        state["backward"] = False

    return step
