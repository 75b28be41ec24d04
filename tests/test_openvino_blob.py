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


def test_a_blob_that_cannot_be_written_costs_only_the_cache(tmp_path):
    """A cache write that fails (here the blob's name is taken by a folder; a full disk fails the same way, with an
    OSError) runs the compiled model, leaves nothing partial, and a later run compiles again."""
    from maskst.runtime.openvino_runner import OpenVinoRunner

    spec, path = _matmul_ir(tmp_path)
    cache = tmp_path / "cache"
    feed = {"x": np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)}
    with OpenVinoRunner(spec, path, precision="f32", cache_dir=False, threads=1) as runner:
        expected = runner.infer(feed)["y"].copy()
    probe = OpenVinoRunner(spec, path, precision="f32", cache_dir=cache, threads=1)
    taken = probe.blob_path({"x": [2, 8]})
    (taken / "something").mkdir(parents=True)
    for _ in range(2):
        with OpenVinoRunner(spec, path, precision="f32", cache_dir=cache, threads=1) as runner:
            np.testing.assert_array_equal(runner.infer(feed)["y"], expected)
            assert list(runner.loaded_from.values()) == ["compiled"]
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == sorted(
        [taken.parent.relative_to(cache), taken.relative_to(cache), (taken / "something").relative_to(cache)])


def test_the_cache_limit_removes_the_least_recently_used_blobs(tmp_path):
    """With a limit, writing a blob removes the least recently used others until the cache fits; a cache hit counts
    as a use (the record's mtime). Three input shapes, room for two: the shape used longest ago goes."""
    import os

    from maskst.runtime.blob_cache import _entry_bytes
    from maskst.runtime.openvino_runner import OpenVinoRunner

    spec, path = _matmul_ir(tmp_path)
    cache = tmp_path / "cache"

    def run(rows: int, limit: int | None = None):
        with OpenVinoRunner(spec, path, precision="f32", cache_dir=cache, threads=1, cache_limit_bytes=limit) as runner:
            runner.infer({"x": np.ones((rows, 8), np.float32)})
            return runner.blob_path({"x": [rows, 8]}), next(iter(runner.loaded_from.values()))

    one, _ = run(1)
    two, _ = run(2)
    for age, blob in ((200, one), (100, two)):  # one used before two, well apart (file times may be coarse)
        past = (blob.stat().st_mtime_ns - age * 10**9,) * 2
        os.utime(f"{blob}.json", ns=past)
    assert run(1) == (one, "cache")  # one is now the most recently used
    limit = int(2.5 * max(_entry_bytes(one), _entry_bytes(two)))  # room for two entries of this size
    three, source = run(3, limit)
    assert source == "compiled"
    assert sorted(cache.rglob("*.blob")) == sorted([one, three])  # two, the least recently used, is gone
    assert not two.with_name(f"{two.name}.json").exists()
    run(4, 1)  # a limit below one entry: every other entry goes, the one just written stays
    assert [p.name for p in cache.rglob("*.blob")] == [run(4)[0].name]


def test_the_cache_limit_reaches_every_runner_and_is_checked(tiny_engines, tmp_path):
    from maskst.engines.manifest import load_manifest
    from maskst.errors import InputError
    from maskst.runtime.backends import RunnerOptions, parse_backend

    manifest = load_manifest(tiny_engines)
    options = RunnerOptions(compile_cache=tmp_path, compile_cache_limit_gb=1.5)
    for backend in ("openvino", "openvino-f32", "openvino-bf16", "ort-cpu"):
        runner = parse_backend(backend).runner(manifest, "unet", options)
        assert runner.cache_limit_bytes == 1_500_000_000, backend
    assert parse_backend("openvino").runner(manifest, "unet", RunnerOptions()).cache_limit_bytes is None
    for bad in (0, -2.0, float("nan")):
        with pytest.raises(InputError, match="compile cache limit"):
            RunnerOptions(compile_cache_limit_gb=bad)
