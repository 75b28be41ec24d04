"""Saving ONNX graphs: inline below 1 GiB of weights, otherwise one external data file."""

from __future__ import annotations

from pathlib import Path

EXTERNAL_DATA_BYTES = 1 << 30  # graphs with more weights than this keep them in one <name>.onnx.data file


def save_graph(model, path: Path) -> None:
    """Check and save ``model`` (an onnx.ModelProto with its weights loaded) at ``path``.

    Models over 2 GB cannot be one protobuf, and the TorchScript exporter writes one file per tensor
    beyond that: large graphs get all weights in a single ``<name>.onnx.data`` beside the graph.
    """
    import onnx

    path = Path(path)
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    if weight_bytes > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        onnx.checker.check_model(str(path))  # by path: the checker reads external data itself
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, str(path))
