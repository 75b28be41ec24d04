"""lineart: the informative-drawings annotator (``sk_model.pth``, ``Generator(3, 1, 3)``) as a graph.

Input ``image`` float32 [1, 3, H, W]: the content image resized to the output size, RGB uint8 / 255
(no normalisation, as StyleShot's ``LineartDetector`` feeds it). Output ``line`` float32 [1, 1, H, W]
in [0, 1]: dark lines on white. H and W are pixel sizes (multiples of 8) within the export range.
The runtime quantises the output as StyleShot does (``uint8(clip(line * 255))``) and stacks it to 3
channels for the ControlNet (:mod:`maskst.control`).
"""

from __future__ import annotations

from pathlib import Path

from maskst.checkpoints import CheckpointSet
from maskst.contract.spec import DimRange, GraphSpec, TensorSpec
from maskst.export.options import ExportOptions

NAME = "lineart"


class LineartGraph:
    """The lineart graph of one ``--lineart-model`` file (registry module interface)."""

    NAME = NAME

    def __init__(self, path: Path, state: dict):
        self.path = Path(path)
        self.state = state  # checked by maskst.control_checkpoints.load_lineart_state

    def spec(self, ckpt: CheckpointSet, options: ExportOptions) -> GraphSpec:
        sizes = DimRange(options.min_size, options.opt_size, options.max_size)
        return GraphSpec(
            name=NAME,
            inputs=(TensorSpec("image", "float32", (1, 3, "H", "W"), low=0.0, high=1.0),),
            outputs=(TensorSpec("line", "float32", (1, 1, "H", "W")),),
            dims={"H": sizes, "W": sizes},
            atol=1e-4, rtol=1e-3,
        )

    def build_module(self, ckpt: CheckpointSet, state: dict, options: ExportOptions):
        """torch module image [1, 3, H, W] -> line [1, 1, H, W] (the Generator with the file's weights)."""
        from maskst.informative_drawings import lineart_generator

        model = lineart_generator()
        model.load_state_dict(self.state)
        return model.float().eval()

    def parity_feeds(self, spec: GraphSpec, dims: dict[str, int]) -> list[dict]:
        """One case at shapes other than the trace (the smallest height, a width 8 px wider): the
        largest size would cost a full-resolution Generator pass in torch and ONNX Runtime each."""
        r = spec.dims["H"]
        return [spec.sample_inputs({"H": r.min, "W": min(r.max, r.min + 8)}, seed=1)]
