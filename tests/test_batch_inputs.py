"""Loosely typed request values (JSON job lines), batch job names, and reruns that must not lose the last results."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from maskst.errors import InputError
from maskst.generation import GenerationConfig

BAD_VALUES = [
    ({"theta": "0.5"}, "theta='0.5' (str) must be a number"),
    ({"theta": None}, "leave theta out"),
    ({"scale": "1"}, "scale='1'"),
    ({"guidance": None}, "guidance=null"),
    ({"guidance": 1e308}, "float32"),  # finite in Python, infinite in the graphs
    ({"guidance": -1.0}, "guidance=-1.0 must be >= 0 (at or below 1 guidance is off, as in diffusers"),
    ({"style": 5}, "style=5"),
    ({"style": [5]}, "style=5 must be a file path"),
    ({"style": None}, "style=null"),
    ({"layer_scales": "abc"}, "layer_scales='abc' must be numbers"),
    ({"layer_scales": "nan,1"}, "layer_scales=[nan, 1.0] must be finite"),
    ({"layer_scales": [True, 1]}, "must be numbers"),
    ({"init_latents": 5}, "init_latents=5 must be a file path"),
    ({"regions": [{"style": "a.png", "mask": 5}]}, "region 1 mask=5"),
    ({"steps": True}, "steps=True (bool) must be an integer"),
    ({"seed": True}, "seed=True (bool)"),
    ({"height": "64"}, "height='64' (str) must be an integer"),
    ({"num_images": 2.0}, "num_images=2.0 (float)"),
    ({"target_blocks": 5}, "target_blocks=5"),
    ({"target_blocks": [1]}, "must be block names"),
    ({"control_image": 5}, "control_image=5"),
    ({"region_scales": "x"}, "region_scales='x'"),
    ({"prompt": None}, "prompt is required"),
    ({"prompt": 5}, "prompt=5 (int) must be a string"),
]


@pytest.mark.parametrize("values, message", BAD_VALUES, ids=[next(iter(v)) + str(i) for i, (v, _) in enumerate(BAD_VALUES)])
def test_wrong_json_types_are_refused_naming_the_field_and_value(values, message):
    with pytest.raises(InputError, match=None) as refused:
        GenerationConfig.create(**{"prompt": "a cat", **values})
    assert message in str(refused.value)


def test_loose_values_that_mean_one_thing_are_taken():
    config = GenerationConfig.create(prompt="a cat", style="wave.png", target_blocks="up_blocks.1", layer_scales="1,0.5",
                                     theta=1, seed=3, scale=2)
    assert config.style[0].name == "wave.png" and config.target_blocks == ("up_blocks.1",)  # not 'u', 'p', ...
    assert config.layer_scales == (1.0, 0.5) and config.theta == 1 and config.scale == 2


def _run(args):
    from maskst.cli.run import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _batch(engines, jobs, out_dir):
    return _run(["--engines", engines, "--batch", jobs, "--out-dir", out_dir, "--steps", "2", "--height", "64",
                 "--width", "64", "--quiet"])


def test_batch_names_stay_in_out_dir_and_bad_lines_name_their_file_line(tiny_engines, style_image, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    good = {"prompt": "a cat", "style": str(style_image), "content": "a house"}
    lines = [json.dumps({**good, "name": "cat"}), "",  # a blank line: the next job is on file line 3
             json.dumps({**good, "theta": "0.5"}),
             json.dumps({**good, "name": "../escaped"}),
             json.dumps({**good, "name": "/tmp/absolute"}),
             json.dumps({**good, "name": "cat"}),  # job 0's name again: would overwrite cat.png
             json.dumps({**good, "name": None}),
             json.dumps({**good, "name": 7})]
    jobs.write_text("\n".join(lines) + "\n")
    out_dir = tmp_path / "out"
    result = _batch(tiny_engines, jobs, out_dir)
    assert result.exit_code == 1, result.output
    records = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "error", "error", "error", "error", "error", "ok"]
    assert [r["line"] for r in records] == [1, 3, 4, 5, 6, 7, 8]
    assert "line 3: theta='0.5'" in records[1]["error"]
    assert all("plain file name" in r["error"] for r in (records[2], records[3], records[5]))
    assert "already job 0's" in records[4]["error"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["7.png", "cat.png", "results.jsonl"]
    assert not (tmp_path / "escaped.png").exists()


def test_a_rerun_that_stops_before_any_job_keeps_the_last_results(tiny_engines, style_image, tmp_path, monkeypatch):
    from maskst.runtime.pipeline import MaskstPipeline

    jobs, out_dir = tmp_path / "jobs.jsonl", tmp_path / "out"
    jobs.write_text(json.dumps({"prompt": "a cat", "style": str(style_image), "content": "a house"}) + "\n")
    assert _batch(tiny_engines, jobs, out_dir).exit_code == 0
    before = (out_dir / "results.jsonl").read_text()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    result = _batch(tiny_engines, empty, out_dir)
    assert result.exit_code == 2 and "has no job lines" in result.output
    assert (out_dir / "results.jsonl").read_text() == before

    def crash(self, *args, **kwargs):  # an unexpected failure inside the first job
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(MaskstPipeline, "generate", crash)
    result = _batch(tiny_engines, jobs, out_dir)
    assert isinstance(result.exception, RuntimeError)
    assert (out_dir / "results.jsonl").read_text() == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["00000.png", "results.jsonl"]  # no staging file left


def test_a_sweep_rerun_that_fails_before_any_job_keeps_its_files(tiny_engines, style_image, tmp_path):
    from maskst.sweep.cli import sweep_main

    prompts, styles, out_dir = tmp_path / "prompts.txt", tmp_path / "styles.csv", tmp_path / "sweep"
    prompts.write_text("a cat\n")
    styles.write_text(f"style,content\n{style_image},a ship\n")
    args = ["--engines", tiny_engines, "--prompts", prompts, "--styles", styles, "--out-dir", out_dir, "--steps", "2",
            "--height", "64", "--width", "64", "--threads", "1", "--quiet"]
    assert CliRunner().invoke(sweep_main, [str(a) for a in args]).exit_code == 0
    before = {name: (out_dir / name).read_text() for name in ("sweep.json", "results.jsonl")}
    # other jobs (their keys change), refused by the engines (no DeepCache graphs) before the first one runs
    result = CliRunner().invoke(sweep_main, [str(a) for a in args + ["--deepcache-interval", "3"]])
    assert result.exit_code == 4, result.output
    assert {name: (out_dir / name).read_text() for name in before} == before
    assert not list(out_dir.glob(".*.partial"))


def test_threads_are_range_checked_and_oversubscription_is_warned(tmp_path):
    result = _run(["--out", tmp_path / "x.png", "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output
    assert not (tmp_path / "x.png").exists()


def test_out_must_name_a_png(tiny_engines, tmp_path):
    result = _run(["--engines", tiny_engines, "--prompt", "a cat", "--out", tmp_path / "x.jpg"])
    assert result.exit_code == 2 and "x.png" in result.output and not (tmp_path / "x.jpg").exists()


def test_a_sweep_checks_its_backend_before_the_engines(tiny_engines, tmp_path):
    """The engines here have no TensorRT plans (exit 4), but a machine without TensorRT is the first fault (exit 6)."""
    from maskst.errors import BackendError
    from maskst.runtime.backends import require_backend
    from maskst.sweep.cli import sweep_main

    try:
        require_backend("trt", False)
    except BackendError:
        pass
    else:
        pytest.skip("TensorRT is available on this machine")
    (tmp_path / "p.txt").write_text("a cat\n")
    (tmp_path / "s.csv").write_text("style,content\nnone.png,a ship\n")
    result = CliRunner().invoke(sweep_main, [str(a) for a in ["--engines", tiny_engines, "--prompts", tmp_path / "p.txt",
                                                               "--styles", tmp_path / "s.csv", "--out-dir", tmp_path / "o",
                                                               "--backend", "trt"]])
    assert result.exit_code == 6, result.output
