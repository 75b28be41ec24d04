"""Small torch wrappers that give a library model the exact IO of a graph spec."""

from __future__ import annotations


def output_of(model, input_name: str, output_name: str):
    """torch module ``x -> getattr(model(**{input_name: x}), output_name)`` in eval mode.

    transformers models return output objects; the exported graph needs one named tensor.
    """
    import torch

    class SelectOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return getattr(self.model(**{input_name: x}), output_name)

    return SelectOutput().eval()


def penultimate_hidden_states(model, input_name: str):
    """torch module ``x -> model(x, output_hidden_states=True).hidden_states[-2]`` (IP-Adapter Plus input)."""
    import torch

    class Penultimate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(**{input_name: x}, output_hidden_states=True).hidden_states[-2]

    return Penultimate().eval()
