"""maskst: content-leakage-free style transfer (MaskST) on Stable Diffusion + IP-Adapter, exported
to ONNX / TensorRT, with a low-latency runtime.

The method lives in :mod:`maskst.masking`; checkpoint loading in :mod:`maskst.checkpoints`; the
PyTorch reference pipeline in :mod:`maskst.reference`; exporters in :mod:`maskst.export`; engines
folders in :mod:`maskst.engines`; the runtime in :mod:`maskst.runtime`.
"""

__version__ = "0.1.0"
