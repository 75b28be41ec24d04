"""maskst-sweep: grid order and names, bad input, resume, a bad style file, and the same grid on a local Ray
(including a worker killed mid-sweep through the documented --crash-marker hook)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskst.sweep.cli import sweep_main

RUN = ["--steps", "2", "--height", "64", "--width", "64", "--threads", "1", "--quiet", "--json"]


def _sweep(*args):
    return CliRunner().invoke(sweep_main, [str(a) for a in args], catch_exceptions=False)


def _summary(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def _lines(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]


def _pngs(out_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out_dir.glob("*.png"))}


@pytest.fixture(scope="module")
def grid(tmp_path_factory, style_image):
    """prompts.txt (2 prompts) and styles.csv (2 styles, relative paths) in a folder of their own."""
    root = tmp_path_factory.mktemp("grid")
    (root / "styles").mkdir()
    Image.open(style_image).save(root / "styles" / "wave.png")
    rng = np.random.default_rng(3)
    Image.fromarray((rng.random((72, 88, 3)) * 255).astype(np.uint8)).save(root / "styles" / "noise.png")
    (root / "prompts.txt").write_text("a cat\n\n# a comment line\na dog on a boat\n")
    (root / "styles.csv").write_text("style,content\nstyles/wave.png,a ship\nstyles/noise.png,a house\n")
    return root


def _args(engines, grid, out_dir, *extra):
    return ["--engines", engines, "--prompts", grid / "prompts.txt", "--styles", grid / "styles.csv",
            "--out-dir", out_dir, *RUN, *extra]


def test_grid_is_expanded_in_a_stable_order_with_deterministic_names(grid):
    from maskst.sweep.grid import SweepJob, SweepSpec

    spec = SweepSpec.create(grid / "prompts.txt", grid / "styles.csv", methods="maskst,ip-adapter", seeds="0,1",
                            run_options={"steps": 2, "height": 64, "width": 64})
    assert spec.prompts == ("a cat", "a dog on a boat")
    assert [s.path for s in spec.styles] == [(grid / "styles" / n).absolute() for n in ("wave.png", "noise.png")]
    jobs = spec.jobs("0123456789abcdef")
    assert len(jobs) == spec.size == 16
    assert [j.name for j in jobs[:5]] == ["p000-s000-maskst-seed0", "p000-s000-maskst-seed1",
                                          "p000-s000-ip-adapter-seed0", "p000-s000-ip-adapter-seed1",
                                          "p000-s001-maskst-seed0"]
    assert [j.index for j in jobs] == list(range(16)) and len({j.key for j in jobs}) == 16
    assert jobs[5].config.content == "a house" and jobs[8].config.prompt == "a dog on a boat"
    assert [j.key for j in spec.jobs("0123456789abcdef")] == [j.key for j in jobs]  # stable
    assert all(a.key != b.key for a, b in zip(jobs, spec.jobs("fedcba9876543210")))  # other engines, other jobs
    assert SweepJob.from_json(jobs[3].to_json()) == jobs[3]


@pytest.mark.parametrize("case,message", [
    ("no-content-column", "has no column 'content'"),
    ("empty-prompts", "has no prompt"),
    ("unknown-method", "unknown method 'stylealigned'"),
    ("bad-seeds", "--seeds 'a,b' must be comma-separated integers"),
    ("bad-height", "height=60 must be a positive multiple of 8"),
    ("workers-without-ray", "--workers only apply with --ray"),
    ("empty-content", "row 2 (b.png): the content column is empty"),
])
def test_bad_input_exits_2_before_any_work(tiny_engines, grid, tmp_path, case, message):
    prompts, styles = grid / "prompts.txt", grid / "styles.csv"
    extra = []
    if case == "no-content-column":
        styles = tmp_path / "s.csv"
        styles.write_text("style,subject\na.png,a ship\n")
    elif case == "empty-prompts":
        prompts = tmp_path / "p.txt"
        prompts.write_text("\n# nothing\n")
    elif case == "empty-content":
        styles = tmp_path / "s.csv"
        styles.write_text("style,content\na.png,a ship\nb.png,\n")
    else:
        extra = {"unknown-method": ["--methods", "maskst,stylealigned"], "bad-seeds": ["--seeds", "a,b"],
                 "bad-height": ["--height", "60"], "workers-without-ray": ["--workers", "2"]}[case]
    out = tmp_path / "out"
    result = _sweep("--engines", tiny_engines, "--prompts", prompts, "--styles", styles, "--out-dir", out, *RUN, *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not out.exists()


def test_in_process_sweep_writes_every_image_and_a_rerun_does_no_work(tiny_engines, grid, tmp_path):
    out = tmp_path / "out"
    result = _sweep(*_args(tiny_engines, grid, out))
    assert result.exit_code == 0, result.output
    assert _summary(result) | {"seconds": 0} == {"status": "ok", "jobs": 12, "ran": 12, "cached": 0, "failed": 0,
                                                 "results": str(out.absolute() / "results.jsonl"), "seconds": 0}
    lines = _lines(out)
    assert [r["job"] for r in lines] == list(range(12))
    assert all(r["status"] == "ok" and not r["cached"] for r in lines)
    first = _pngs(out)
    assert sorted(first) == sorted(r["images"][0] for r in lines) and len(first) == 12
    meta = json.loads(Image.open(out / "p001-s000-instantstyle-seed0.png").text["maskst"])
    assert meta["prompt"] == "a dog on a boat" and meta["content"] == "a ship" and meta["method"] == "instantstyle"
    assert meta["style"] == [str((grid / "styles" / "wave.png").absolute())] and meta["steps"] == 2
    assert meta["sweep"]["key"] == lines[7]["key"] and meta["sweep"]["job"] == 7
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["jobs"] == 12 and sweep["methods"] == ["maskst", "instantstyle", "ip-adapter"]

    again = _sweep(*_args(tiny_engines, grid, out))
    assert again.exit_code == 0 and _summary(again)["ran"] == 0 and _summary(again)["cached"] == 12
    assert _pngs(out) == first  # nothing rewritten
    assert all(r["status"] == "ok" and r["cached"] for r in _lines(out))

    (out / "p000-s001-maskst-seed0.png").unlink()  # a lost image and a changed option are redone
    redo = _sweep(*_args(tiny_engines, grid, out))
    assert _summary(redo)["ran"] == 1 and _summary(redo)["cached"] == 11
    dry = _sweep(*_args(tiny_engines, grid, out, "--steps", "3", "--dry-run"))
    assert json.loads(dry.stdout.splitlines()[-1]) == {"jobs": 12, "pending": 12, "finished": 0}


def test_a_bad_style_file_fails_its_jobs_only(tiny_engines, grid, tmp_path):
    (tmp_path / "broken.png").write_text("not an image")
    styles = tmp_path / "styles.csv"
    styles.write_text(f"style,content\n{(grid / 'styles' / 'wave.png').absolute()},a ship\nbroken.png,a dog\n"
                      "missing.png,a tree\n")
    out = tmp_path / "out"
    args = ["--engines", tiny_engines, "--prompts", grid / "prompts.txt", "--styles", styles, "--methods", "maskst",
            "--out-dir", out, *RUN]
    result = _sweep(*args)
    assert result.exit_code == 1
    assert _summary(result)["failed"] == 4 and _summary(result)["ran"] == 6
    lines = _lines(out)
    assert [r["status"] for r in lines] == ["ok", "error", "error"] * 2
    assert "broken.png: not an image file" in lines[1]["error"] and lines[1]["exit_code"] == 2
    assert "missing.png: no such file" in lines[2]["error"]
    assert "error: job 1 (p000-s001-maskst-seed0)" in result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["p000-s000-maskst-seed0.png", "p001-s000-maskst-seed0.png"]
    again = _sweep(*args)  # the failed jobs are tried again, the finished ones are not
    assert again.exit_code == 1 and _summary(again)["cached"] == 2 and _summary(again)["ran"] == 4


def test_the_in_process_path_does_not_import_ray():
    import subprocess
    import sys

    code = ("import sys, maskst.sweep.cli, maskst.sweep.runner, maskst.sweep.executors, maskst.sweep.evaluate; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engines_digest_is_the_pipelines(tiny_engines):
    from maskst.runtime.pipeline import MaskstPipeline
    from maskst.sweep.store import engines_digest

    with MaskstPipeline(tiny_engines, verify_hashes=False, threads=1) as pipeline:
        assert engines_digest(tiny_engines) == pipeline.manifest.digest


# ------------------------------------------------------------------------------------------ Ray


def test_an_actor_that_cannot_open_its_pipeline_fails_its_jobs_with_the_message(grid, tmp_path):
    from maskst.sweep.executors import PipelineOptions
    from maskst.sweep.grid import SweepSpec
    from maskst.sweep.ray_executor import SweepActor

    jobs = SweepSpec.create(grid / "prompts.txt", grid / "styles.csv", methods="maskst").jobs("0" * 16)[:2]
    actor = SweepActor(PipelineOptions(tmp_path / "no-engines"), str(tmp_path), None)  # called here, not on Ray
    out = actor({"job": np.array([job.to_json() for job in jobs], dtype=object)})
    records = [json.loads(r) for r in out["record"]]
    assert [r["job"] for r in records] == [0, 1] and all(r["status"] == "error" for r in records)
    assert "could not open the pipeline: engines folder" in records[0]["error"] and records[0]["exit_code"] == 4


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray per test session: 2 CPUs, no dashboard (about 5 s to start)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, configure_logging=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


def _images(out_dir: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in sorted(out_dir.glob("*.png"))}


def test_ray_runs_the_same_grid_and_a_rerun_does_no_work(local_ray, tiny_engines, grid, tmp_path):
    local, distributed = tmp_path / "local", tmp_path / "ray"
    assert _sweep(*_args(tiny_engines, grid, local)).exit_code == 0
    result = _sweep(*_args(tiny_engines, grid, distributed, "--ray", "--workers", "2"))
    assert result.exit_code == 0, result.output
    assert _summary(result)["ran"] == 12 and _summary(result)["failed"] == 0
    lines = _lines(distributed)
    assert [r["job"] for r in lines] == list(range(12)) and all(r["status"] == "ok" for r in lines)
    a, b = _images(local), _images(distributed)
    assert sorted(a) == sorted(b) and len(b) == 12
    assert max(int(np.abs(a[k] - b[k]).max()) for k in a) <= 1
    first = _pngs(distributed)
    again = _sweep(*_args(tiny_engines, grid, distributed, "--ray", "--workers", "2"))
    assert again.exit_code == 0 and _summary(again)["ran"] == 0 and _summary(again)["cached"] == 12
    assert _pngs(distributed) == first


def test_a_killed_ray_worker_loses_no_job(local_ray, tiny_engines, grid, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "crash-once"
    # the first worker to start a job after finishing 2 renames it to crash-once.fired and exits at once
    marker.write_text("2")
    result = _sweep(*_args(tiny_engines, grid, out, "--ray", "--workers", "2", "--crash-marker", marker))
    assert result.exit_code == 0, result.output
    assert not marker.exists() and Path(f"{marker}.fired").exists()  # a worker did die
    assert _summary(result)["ran"] + _summary(result)["cached"] == 12 and _summary(result)["failed"] == 0
    lines = _lines(out)
    assert [r["job"] for r in lines] == list(range(12)) and all(r["status"] == "ok" for r in lines)
    assert len({r["worker"] for r in lines if not r["cached"]}) == 3  # two actors, one of them restarted
    assert len(_pngs(out)) == 12
    first = _pngs(out)
    again = _sweep(*_args(tiny_engines, grid, out, "--ray", "--workers", "2"))
    assert _summary(again)["ran"] == 0 and _pngs(out) == first


def test_a_second_sweep_into_the_same_folder_is_refused_while_one_runs(tmp_path):
    import filelock

    from maskst.errors import InputError
    from maskst.sweep.runner import LOCK_NAME, run_sweep

    out = tmp_path / "out"
    out.mkdir()
    with filelock.FileLock(out / LOCK_NAME):  # stands for a sweep in progress
        with pytest.raises(InputError, match="another maskst-sweep is writing into it"):
            run_sweep(spec=None, engines=tmp_path, out_dir=out, executor=None, progress=False)
