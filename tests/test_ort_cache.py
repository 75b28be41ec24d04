"""ort-cpu's optimized-graph cache (maskst.runtime.ort_cache): stored once, loaded after, the same outputs bit for bit;
keyed by the graph files (a re-export is a miss and evicts the old entry); a broken entry or an unwritable folder
costs the cache, never the session; off with compile_cache=False; GPU providers are not cached."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from maskst.engines.manifest import load_manifest
from maskst.runtime.backends import RunnerOptions, parse_backend
from maskst.runtime.runners import OrtRunner

GRAPH = "unet"  # the graph ONNX Runtime optimizes the most (convolutions: NCHWc) and its weights go to .onnx.data


@pytest.fixture()
def graph_copy(tiny_engines, tmp_path) -> tuple:
    """(spec, path) of a copy of the tiny UNet (its files may be touched here without touching the shared engines)."""
    manifest = load_manifest(tiny_engines)
    source = manifest.graph_path(GRAPH)
    folder = tmp_path / "engines"
    folder.mkdir()
    for file in (source, Path(f"{source}.data")):
        if file.is_file():
            shutil.copy2(file, folder / file.name)
    return manifest.graph_spec(GRAPH), folder / source.name


def _run(spec, path, cache_dir, feed) -> tuple[str | None, dict]:
    with OrtRunner(spec, path, threads=1, cache_dir=cache_dir) as runner:
        return runner.loaded_from, {k: v.copy() for k, v in runner.infer(feed).items()}


def _feed(spec):
    return spec.sample_inputs(spec.resolve({"N": 1, "h": 4, "w": 8}), seed=1)


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "cpu").glob("*.onnx"))


def test_stored_once_then_loaded_with_the_same_outputs(graph_copy, tmp_path):
    spec, path = graph_copy
    cache, feed = tmp_path / "cache", _feed(spec)
    plain_source, plain = _run(spec, path, False, feed)
    assert plain_source == "optimized" and not cache.exists()  # off: nothing written
    first_source, first = _run(spec, path, cache, feed)
    [entry] = _entries(cache)
    assert first_source == "optimized" and entry.name.startswith(f"{GRAPH}-")
    assert Path(f"{entry}.data").stat().st_size > 0 and Path(f"{entry}.json").is_file()
    assert [p.name for p in (cache / "cpu").iterdir() if p.name.startswith(".")] == []  # no staging left
    second_source, second = _run(spec, path, cache, feed)
    assert second_source == "cache"
    for name in plain:  # the optimized graph is the one the plain session runs: bit for bit
        np.testing.assert_array_equal(first[name], plain[name])
        np.testing.assert_array_equal(second[name], plain[name])


def test_a_reexported_graph_misses_and_evicts_the_old_entry(graph_copy, tmp_path):
    spec, path = graph_copy
    cache, feed = tmp_path / "cache", _feed(spec)
    _run(spec, path, cache, feed)
    [old] = _entries(cache)
    stat = path.stat()
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # what maskst-export --force does to the file
    source, _ = _run(spec, path, cache, feed)
    [new] = _entries(cache)
    assert source == "optimized" and new != old
    assert not any(Path(f"{old}{suffix}").exists() for suffix in ("", ".data", ".json", ".lock"))


@pytest.mark.parametrize("damage", ["graph", "weights"])
def test_a_broken_entry_is_replaced(graph_copy, tmp_path, damage):
    spec, path = graph_copy
    cache, feed = tmp_path / "cache", _feed(spec)
    _, expected = _run(spec, path, cache, feed)
    [entry] = _entries(cache)
    broken = entry if damage == "graph" else Path(f"{entry}.data")
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 3])  # a truncated file (disk full, killed)
    source, got = _run(spec, path, cache, feed)
    assert source == "optimized"  # refused, removed, optimized and stored again
    assert _run(spec, path, cache, feed)[0] == "cache"
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_an_unwritable_cache_costs_only_the_cache(graph_copy, tmp_path):
    spec, path = graph_copy
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    source, outputs = _run(spec, path, blocker, _feed(spec))
    assert source == "optimized" and outputs and blocker.read_text().startswith("a file")


def test_backend_options_place_the_cache(tiny_engines, tmp_path):
    manifest = load_manifest(tiny_engines)
    cpu = parse_backend("ort-cpu")
    assert cpu.runner(manifest, GRAPH, RunnerOptions(compile_cache=tmp_path)).cache_dir == tmp_path / "onnxruntime"
    assert cpu.runner(manifest, GRAPH, RunnerOptions(compile_cache=False)).cache_dir is None
    assert cpu.runner(manifest, GRAPH, RunnerOptions()).cache_dir == Path.home() / ".cache/maskst/onnxruntime"
    # GPU providers: their sessions are not cached (made here, never activated: no GPU needed)
    gpu = OrtRunner(manifest.graph_spec(GRAPH), manifest.graph_path(GRAPH), backend="ort-cuda", cache_dir=tmp_path)
    assert gpu.cache_dir is None


def _activate_in_process(spec, path, cache_dir, queue) -> None:
    with OrtRunner(spec, path, threads=1, cache_dir=cache_dir) as runner:
        queue.put(runner.loaded_from)


def test_processes_starting_together_store_one_entry(graph_copy, tmp_path):
    """Two processes load the same graph at once: one optimizes and stores, the other waits and loads (Ray workers
    would otherwise each write a copy of the weights)."""
    import multiprocessing

    spec, path = graph_copy
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_activate_in_process, args=(spec, path, tmp_path / "cache", queue))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert sorted(queue.get(timeout=5) for _ in workers) == ["cache", "optimized"]
    assert len(_entries(tmp_path / "cache")) == 1


def test_the_cache_limit_keeps_the_most_recently_used_entries(graph_copy, tmp_path):
    """ort-cpu's entries obey the same limit as OpenVINO's blobs: a graph stored under a limit too small for two
    removes the other graph's entry (used longer ago); the entry just stored stays."""
    spec, path = graph_copy
    cache, feed = tmp_path / "cache", _feed(spec)
    _run(spec, path, cache, feed)
    [first] = _entries(cache)
    other = path.with_name("unet_other.onnx")  # a second graph (another file name: another key; it names the same
    shutil.copy2(path, other)                  # weights file beside it, if any)
    with OrtRunner(spec, other, threads=1, cache_dir=cache, cache_limit_bytes=1) as runner:
        assert runner.loaded_from == "optimized"
    [kept] = _entries(cache)
    assert kept != first and not any(Path(f"{first}{suffix}").exists() for suffix in ("", ".data", ".json"))
    assert _run(spec, other, cache, feed)[0] == "cache"
