"""The OpenVINO runner's compiled-model blob: streamed to its file (no copy in memory), byte for byte what
``export_model`` produces, published atomically. A one-MatMul model, no engines folder."""

from __future__ import annotations

import io

import numpy as np
import pytest

try:
    import openvino as ov

    HAVE_OPENVINO = True
except ImportError:
    HAVE_OPENVINO = False

pytestmark = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (pip install 'maskst[openvino]')")


def _matmul_ir(tmp_path):
    """x [N, 8] @ W [8, 64] -> y, saved as an fp32 IR; its GraphSpec."""
    from openvino import opset13 as ops

    from maskst.contract.spec import DimRange, GraphSpec, TensorSpec

    x = ops.parameter([-1, 8], np.float32, name="x")
    x.output(0).get_tensor().set_names({"x"})
    y = ops.matmul(x, ops.constant(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)), False, False)
    y.output(0).get_tensor().set_names({"y"})
    path = tmp_path / "matmul.xml"
    ov.save_model(ov.Model([y], [x]), path, compress_to_fp16=False)
    spec = GraphSpec("matmul", (TensorSpec("x", "float32", ("N", 8)),), (TensorSpec("y", "float32", ("N", 64)),),
                     {"N": DimRange(1, 1, 4)})
    return spec, path


def _exported_bytes(compiled) -> bytes:
    data = compiled.export_model()  # bytes from older bindings, an io.BytesIO from 2026.x
    return data.getvalue() if isinstance(data, io.BytesIO) else bytes(data)


def test_blob_is_streamed_to_its_file_and_imported(tmp_path):
    from maskst.runtime.openvino_runner import OpenVinoRunner

    spec, path = _matmul_ir(tmp_path)
    cache = tmp_path / "cache"
    feed = {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)}

    def run():
        with OpenVinoRunner(spec, path, precision="f32", cache_dir=cache, threads=1) as runner:
            return runner.infer(feed)["y"].copy(), next(iter(runner.loaded_from.values())), runner

    first, source, runner = run()
    assert source == "compiled"
    (blob,) = cache.rglob("*.blob")
    assert blob == runner.blob_path({"x": [2, 8]})
    assert not list(cache.rglob("*.tmp"))
    again, source, _ = run()
    assert source == "cache"
    np.testing.assert_array_equal(again, first)


def test_streamed_blob_is_the_in_memory_export_byte_for_byte(tmp_path):
    from maskst.runtime.openvino_runner import export_blob, openvino_core

    _, path = _matmul_ir(tmp_path)
    model = openvino_core().read_model(str(path))
    model.reshape({"x": [2, 8]})
    compiled = openvino_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    blob = tmp_path / "matmul.blob"
    export_blob(compiled, blob)
    # the same compiled model exported into memory (OpenVINO's own io.BytesIO): header patched in place alike
    assert blob.read_bytes() == _exported_bytes(compiled)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


class _FailingExport:
    """A compiled model whose export breaks off half-way (disk full, an OpenVINO error)."""

    def export_model(self, stream):
        stream.write(b"half a blob")
        raise RuntimeError("export failed")


class _BypassingExport:
    """A compiled model whose binding would write into the BytesIO's own buffer, past the file sink."""

    def export_model(self, stream):
        io.BytesIO.write(stream, b"the whole blob")


def test_a_failed_export_leaves_the_old_blob_and_no_tmp(tmp_path):
    from maskst.errors import BackendError
    from maskst.runtime.openvino_runner import export_blob

    blob = tmp_path / "graph-0123.blob"
    with pytest.raises(RuntimeError, match="export failed"):
        export_blob(_FailingExport(), blob)
    assert list(tmp_path.iterdir()) == []
    blob.write_bytes(b"an older blob")
    with pytest.raises(BackendError, match="bypassed"):
        export_blob(_BypassingExport(), blob)
    assert list(tmp_path.iterdir()) == [blob] and blob.read_bytes() == b"an older blob"


def test_blobs_of_a_re_exported_graph_are_removed_when_its_new_blob_is_written(tmp_path):
    """A blob's key holds its graph file's size and mtime: once the graph is re-exported the old blob can never be
    hit, and writing the new one removes it. Blobs of unchanged files (another graph, other shapes) stay."""
    import os

    from maskst.runtime.openvino_runner import OpenVinoRunner

    spec, path = _matmul_ir(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_spec, other_path = _matmul_ir(other_dir)
    cache = tmp_path / "cache"
    feeds = [{"x": np.ones((n, 8), np.float32)} for n in (2, 3)]

    def run(spec, path, feed):
        with OpenVinoRunner(spec, path, precision="f32", cache_dir=cache, threads=1) as runner:
            runner.infer(feed)
            return runner.blob_path({"x": list(feed["x"].shape)}), next(iter(runner.loaded_from.values()))

    old = [run(spec, path, feed)[0] for feed in feeds]
    kept, _ = run(other_spec, other_path, feeds[0])
    assert all(p.is_file() and p.with_name(p.name + ".json").is_file() for p in old + [kept])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the graph re-exported (same bytes, new mtime)
    new, source = run(spec, path, feeds[0])
    assert source == "compiled" and new not in old
    assert sorted(cache.rglob("*.blob")) == sorted([new, kept])  # both blobs of the old file gone, with records
    assert sorted(p.name for p in cache.rglob("*.json")) == sorted([new.name + ".json", kept.name + ".json"])
    path.unlink()  # a graph deleted: its blob goes at the next write
    run(other_spec, other_path, feeds[1])
    assert not new.exists() and kept.is_file()
