"""Export-time rewrites: diffusers submodules replaced by ones that compute the same function from the
same weights but export to graphs the runtimes compile better.

A rewrite runs on the export's own freshly loaded model (the PyTorch reference loads its own copy and
is never rewritten), before tracing; the graph is then parity-checked against the reference like any
other, so a rewrite that changed the function would fail the export.

:func:`split_geglu`: diffusers' ``GEGLU`` (every SD 1.5 / SDXL transformer block's feed-forward input)
computes ``proj(x)`` [.., 2h] and then ``chunk(2, dim=-1)``, which exports as one MatMul, two ``Slice``
nodes of its output and the ``Shape``/``Gather``/``Div`` chain that computes where to cut. OpenVINO's CPU
plugin turns the slices into a split and runs it with a reference kernel (``VariadicSplit:
ref_bf16``: 12 ms of an int8 SD 1.5 UNet call, 18 ms of a bf16 one, at 256 px on a 2-core Zen 4) and
the gate's consumer then reads half-rows of the wide output. Two projections of width h from the same
input -- the two halves of ``proj``'s weight rows -- are the same numbers (each output element is the
same dot product) with no split at all.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def split_geglu_class():
    """The torch module class (built on first use: this module imports no torch at import time)."""
    import torch
    import torch.nn.functional as F

    class SplitGEGLU(torch.nn.Module):
        """``hidden(x) * gelu(gate(x))`` with ``hidden`` / ``gate`` = rows [:h] / [h:] of a GEGLU's ``proj``:
        x float32 [.., d] -> float32 [.., h], the value of ``GEGLU.forward(x)``."""

        def __init__(self, proj: torch.nn.Linear):
            super().__init__()
            width = proj.out_features // 2
            bias = proj.bias is not None
            self.hidden = torch.nn.Linear(proj.in_features, width, bias=bias, dtype=proj.weight.dtype)
            self.gate = torch.nn.Linear(proj.in_features, width, bias=bias, dtype=proj.weight.dtype)
            with torch.no_grad():
                self.hidden.weight.copy_(proj.weight[:width])
                self.gate.weight.copy_(proj.weight[width:])
                if bias:
                    self.hidden.bias.copy_(proj.bias[:width])
                    self.gate.bias.copy_(proj.bias[width:])

        def forward(self, hidden_states, *args, **kwargs):
            return self.hidden(hidden_states) * F.gelu(self.gate(hidden_states))

    return SplitGEGLU


def split_geglu(model) -> int:
    """Replace every diffusers ``GEGLU`` in ``model`` (in place) by the equivalent two-projection module;
    returns how many were replaced. Only that exact class: a subclass may compute something else."""
    from diffusers.models.activations import GEGLU

    cls = split_geglu_class()
    found = [name for name, module in model.named_modules() if type(module) is GEGLU]
    for name in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, cls(getattr(parent, child).proj))
    return len(found)
