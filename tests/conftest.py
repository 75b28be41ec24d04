"""Shared fixtures: tiny random checkpoints in the real layouts and engines exported from them.

Built once per test session. Torch runs single-threaded: with two threads and another busy
process a tiny UNet forward took 1.3 s instead of 9 ms (DESIGN section 10).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _single_thread_torch():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def _export(fixtures, out: Path, **options):
    return _export_checkpoints(fixtures.base, fixtures.ip_adapter, fixtures.image_encoder, fixtures.content_encoder,
                               out, **options)


def _export_checkpoints(base, ip_adapter, image_encoder, content_encoder, out: Path, **options):
    """Export one checkpoint set (image / content encoder None: the family's defaults) with small sizes."""
    from maskst.export.exporter import ExportRequest, export_engines
    from maskst.export.options import ExportOptions

    defaults = dict(min_size=32, opt_size=64, max_size=128, max_batch=2)
    control = {key: options.pop(key) for key in ("controlnets", "lineart_model") if key in options}
    defaults.update(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings of the TorchScript exporter
        return export_engines(ExportRequest(base=base, ip_adapter=ip_adapter, image_encoder=image_encoder,
                                            content_encoder=content_encoder, out=out,
                                            options=ExportOptions(**defaults), **control), progress=False)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """FixturePaths of the 'tiny' preset (development dimensions)."""
    from maskst.fixtures import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixtures") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_wide(tmp_path_factory):
    """FixturePaths of the 'tiny-wide' preset: other widths, depths, head sizes, token count."""
    from maskst.fixtures import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixtures") / "tiny_wide", "tiny-wide", seed=5)


@pytest.fixture(scope="session")
def tiny_engines(tiny, tmp_path_factory):
    return _export(tiny, tmp_path_factory.mktemp("engines") / "tiny").folder


@pytest.fixture(scope="session")
def wide_engines(tiny_wide, tmp_path_factory):
    return _export(tiny_wide, tmp_path_factory.mktemp("engines") / "wide", min_size=64, opt_size=64, max_size=128).folder


@pytest.fixture(scope="session")
def wide_control_engines(tiny_wide, tmp_path_factory):
    """tiny-wide engines with its ControlNet and the lineart annotator (maskst-export --controlnet --lineart-model)."""
    return _export(tiny_wide, tmp_path_factory.mktemp("engines") / "wide_control", min_size=64, opt_size=64,
                   max_size=128, controlnets=(tiny_wide.controlnet,), lineart_model=tiny_wide.lineart_model).folder


@pytest.fixture(scope="session")
def export_fn():
    return _export


@pytest.fixture(scope="session")
def export_checkpoints():
    return _export_checkpoints


def _two_row_copy(engines: Path, out: Path) -> Path:
    """A copy of an engines folder as exported before the UNet took B = N (guidance off): no ``optional_factors`` in
    its graph specs, so its denoising graphs take B = 2N only."""
    import json
    import shutil

    shutil.copytree(engines, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["graphs"].values():
        entry["spec"].pop("optional_factors", None)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def two_row_copy():
    return _two_row_copy


@pytest.fixture(scope="session")
def sdxl_tiny(tmp_path_factory):
    """SdxlFixturePaths of the 'sdxl-tiny' preset (SDXL development dimensions)."""
    from maskst.fixtures import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixtures") / "sdxl_tiny", "sdxl-tiny", seed=0)


@pytest.fixture(scope="session")
def sdxl_wide(tmp_path_factory):
    """SdxlFixturePaths of 'sdxl-tiny-wide': other widths, depths, heads, levels and layer count."""
    from maskst.fixtures import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixtures") / "sdxl_wide", "sdxl-tiny-wide", seed=5)


@pytest.fixture(scope="session")
def sdxl_engines(sdxl_tiny, tmp_path_factory):
    """ip-adapter_sdxl (bigG) engines of sdxl-tiny, content encoder = the base's text_encoder_2; sizes up to
    1024 so that a request without --height / --width runs at the family default."""
    return _export_checkpoints(sdxl_tiny.base, sdxl_tiny.ip_adapter, None, None,
                               tmp_path_factory.mktemp("engines") / "sdxl", max_size=1024).folder


@pytest.fixture(scope="session")
def style_image(tmp_path_factory) -> Path:
    """A small RGB style image made in code."""
    from PIL import Image

    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("images") / "style.png"
    y, x = np.mgrid[0:96, 0:128] / 32.0
    img = np.stack([np.sin(3 * x), np.cos(2 * y), np.sin(x * y)], -1) * 0.4 + 0.5 + 0.05 * rng.standard_normal((96, 128, 3))
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    return path
