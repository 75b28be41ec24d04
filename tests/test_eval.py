"""maskst-eval: the seed's metrics from the engines' encoders, checked against PyTorch (transformers) cosines."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskst.sweep.cli import eval_main, sweep_main
from maskst.sweep.metrics import image_scores, mean_interval

SCORES = ("style_score", "text_score", "leakage", "gated_style_score", "gated_leakage")


def _invoke(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def evaluated(tiny_engines, style_image, tmp_path_factory):
    """A 2 prompts x 2 styles x 3 methods sweep and its maskst-eval outputs."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(7)
    Image.fromarray((rng.random((70, 90, 3)) * 255).astype(np.uint8)).save(root / "noise.png")
    (root / "prompts.txt").write_text("a cat\na horse in a city\n")
    (root / "styles.csv").write_text(f"style,content\n{style_image},a ship\nnoise.png,a tree\n")
    out = root / "sweep"
    result = _invoke(sweep_main, "--engines", tiny_engines, "--prompts", root / "prompts.txt", "--styles",
                     root / "styles.csv", "--out-dir", out, "--steps", "2", "--height", "64", "--width", "64",
                     "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.output
    paths = {"json": root / "eval.json", "csv": root / "eval.csv", "plot": root / "eval.png"}
    result = _invoke(eval_main, "--engines", tiny_engines, "--results", out, "--threads", "1", "--quiet",
                     "--json", paths["json"], "--csv", paths["csv"], "--plot", paths["plot"])
    assert result.exit_code == 0, result.output
    return {"out": out, "report": json.loads(paths["json"].read_text()), "stdout": result.stdout, **paths}


def _torch_embeddings(tiny, engines_digest_images, texts):
    """Independent embeddings: transformers' CLIP towers from the fixture folders, transformers' image processor."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer, CLIPVisionModelWithProjection

    from maskst.torch_models import quiet_transformers

    with quiet_transformers():
        vision = CLIPVisionModelWithProjection.from_pretrained(str(tiny.image_encoder), dtype=torch.float32).eval()
        clip = CLIPModel.from_pretrained(str(tiny.content_encoder), dtype=torch.float32).eval()
        tokenizer = CLIPTokenizer.from_pretrained(str(tiny.content_encoder))
        processor = CLIPImageProcessor.from_pretrained(str(tiny.base / "feature_extractor"))
    with torch.no_grad():
        pixels = processor(images=engines_digest_images, return_tensors="pt").pixel_values
        image_embeds = vision(pixel_values=pixels).image_embeds
        length = clip.config.text_config.max_position_embeddings
        ids = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        # CLIP's text_embeds: the final hidden state at the end-of-text token, projected. (The tiny fixture's
        # laion-style config names eos_token_id 49407, outside its small vocabulary, so the pooling is written
        # out here rather than left to CLIPModel.get_text_features.)
        hidden = clip.text_model(input_ids=ids).last_hidden_state
        eos = (ids == tokenizer.eos_token_id).int().argmax(-1)
        text_embeds = clip.text_projection(hidden[torch.arange(len(texts)), eos])
    return image_embeds.double().numpy(), text_embeds.double().numpy()


def test_eval_numbers_equal_pytorch_cosines(evaluated, tiny):
    report = evaluated["report"]
    images = report["images"]
    assert len(images) == 12 and not report["skipped"]
    assert {r["method"] for r in images} == {"maskst", "instantstyle", "ip-adapter"}
    styles = sorted({r["style"][0] for r in images})
    texts = sorted({r["prompt"] for r in images} | {r["content"] for r in images})
    pil = [Image.open(evaluated["out"] / r["file"]).convert("RGB") for r in images] + \
          [Image.open(s).convert("RGB") for s in styles]
    image_embeds, text_embeds = _torch_embeddings(tiny, pil, texts)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    image_embeds, text_embeds = unit(image_embeds), unit(text_embeds)
    style_of = dict(zip(styles, image_embeds[len(images):]))
    text_of = dict(zip(texts, text_embeds))
    for row, g in zip(images, image_embeds):
        s, p, c = style_of[row["style"][0]], text_of[row["prompt"]], text_of[row["content"]]
        faithful = g @ p >= g @ c
        expected = {"style_score": g @ s, "text_score": g @ p, "leakage": (g @ c) / (s @ c),
                    "gated_style_score": g @ (s - c) if faithful else 0.0,
                    "gated_leakage": (g @ c) / (s @ c) if faithful else 1.0}
        if abs(g @ p - g @ c) > 1e-4:  # no near-tie: the gate must agree
            assert row["faithful"] == bool(faithful), row["file"]
            for key in SCORES:
                assert row[key] == pytest.approx(expected[key], abs=1e-4), (row["file"], key)
        for key in ("style_score", "text_score", "leakage"):
            assert row[key] == pytest.approx(expected[key], abs=1e-4), (row["file"], key)
        assert row["cos_gen_content"] == pytest.approx(g @ c, abs=1e-4)
        assert row["cos_style_content"] == pytest.approx(s @ c, abs=1e-4)


def test_summary_is_mean_and_student_t_interval_per_method(evaluated):
    report = evaluated["report"]
    assert json.loads(evaluated["stdout"].strip().splitlines()[-1]) == report["summary"]
    for method, summary in report["summary"].items():
        rows = [r for r in report["images"] if r["method"] == method]
        assert summary["images"] == len(rows) == 4
        for key in SCORES + ("faithful",):
            values = np.array([float(r[key]) for r in rows])
            half = 3.182446305284263 * values.std(ddof=1) / math.sqrt(4)  # t(0.975, 3)
            assert summary[key]["mean"] == pytest.approx(values.mean(), abs=1e-12)
            assert summary[key]["ci95"] == pytest.approx([values.mean() - half, values.mean() + half], abs=1e-9)
    encoders = report["encoders"]
    assert encoders["image"]["graph"] == "image_encoder" and encoders["text"]["graph"] == "content_encoder"
    assert encoders["image"]["preprocessing"]["crop_size"] == 224


def test_csv_and_plot(evaluated):
    with open(evaluated["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    assert list(rows[0])[:8] == ["file", "method", "style_score", "text_score", "leakage", "faithful",
                                 "gated_style_score", "gated_leakage"]
    first = evaluated["report"]["images"][0]
    assert rows[0]["file"] == first["file"] and float(rows[0]["style_score"]) == pytest.approx(first["style_score"])
    with Image.open(evaluated["plot"]) as plot:
        assert plot.format == "PNG" and plot.width > 600


def test_folder_without_results_jsonl_and_unscorable_files(evaluated, tiny_engines, tmp_path):
    for name in ("p000-s000-maskst-seed0.png", "p001-s001-ip-adapter-seed0.png"):
        shutil.copy(evaluated["out"] / name, tmp_path / name)
    Image.new("RGB", (64, 64)).save(tmp_path / "plain.png")  # no maskst metadata
    result = _invoke(eval_main, "--engines", tiny_engines, "--results", tmp_path, "--threads", "1", "--quiet",
                     "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert [r["file"] for r in report["images"]] == ["p000-s000-maskst-seed0.png", "p001-s001-ip-adapter-seed0.png"]
    assert report["skipped"] == [{"file": "plain.png", "reason": "missing, or no maskst metadata"}]
    by_file = {r["file"]: r for r in evaluated["report"]["images"]}
    assert report["images"][0]["style_score"] == pytest.approx(by_file["p000-s000-maskst-seed0.png"]["style_score"])
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _invoke(eval_main, "--engines", tiny_engines, "--results", empty, "--quiet")
    assert result.exit_code == 2 and "no image to score" in result.stderr


def test_image_scores_gate():
    g, s = np.array([1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0])
    prompt, content = np.array([1.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])
    scores = image_scores(g, s, prompt, content)  # g.p = 0.707 < g.c = 1: not faithful
    assert scores["faithful"] is False and scores["gated_style_score"] == 0.0 and scores["gated_leakage"] == 1.0
    assert scores["style_score"] == pytest.approx(1 / math.sqrt(2))
    assert scores["leakage"] == pytest.approx(1.0 / (1 / math.sqrt(2)))
    scores = image_scores(g, s, content, prompt)  # g.p = 1 >= g.c = 0.707: faithful
    assert scores["faithful"] is True
    assert scores["gated_style_score"] == pytest.approx(1 / math.sqrt(2) - 1 / math.sqrt(2))
    assert scores["gated_leakage"] == scores["leakage"] == pytest.approx((1 / math.sqrt(2)) / 0.5)


def test_student_t_intervals():
    # n = 2: mean 2, sd sqrt(2), t(0.975, 1) = 12.7062047362 (tables) -> half width 12.7062 * sqrt(2) / sqrt(2)
    low, high = mean_interval([1.0, 3.0])["ci95"]
    assert (high - low) / 2 == pytest.approx(12.7062047362, abs=1e-8)
    assert mean_interval([1.0]) == {"n": 1, "mean": 1.0, "ci95": None}
    assert mean_interval([]) == {"n": 0, "mean": None, "ci95": None}
    assert mean_interval([1.0, None, float("nan"), 3.0])["n"] == 2
