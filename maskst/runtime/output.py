"""Writing results: PNGs with generation metadata, written atomically; output-path checks up front."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from maskst import __version__
from maskst.contract.files import atomic_output, output_target
from maskst.errors import InputError


def _refuse_file_ancestor(folder: Path, path: Path, what: str) -> None:
    """InputError if ``folder`` or one of its ancestors is an existing non-folder (a regular file):
    writing or creating anything under it would fail with NotADirectoryError."""
    for ancestor in (folder, *folder.parents):
        if os.path.exists(ancestor):  # (os.path: never raises)
            if not os.path.isdir(ancestor):
                raise InputError(f"{what} {path}: {ancestor} is a file, not a folder; "
                                 f"choose a path inside a folder (or move {ancestor} away)")
            return


def check_writable(path: Path, what: str = "--out") -> None:
    """Refuse an output path that cannot be written, before any compute."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name such as {path / 'out.png'}")
    target, _ = output_target(path, what)  # refuses a FIFO or device node; a symlink: where it points
    parent = target.parent if str(target.parent) else Path(".")
    _refuse_file_ancestor(parent, path, what)
    if not parent.exists():
        raise InputError(f"{what} {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise InputError(f"{what} {path} cannot be written (permission denied); choose another location")


def check_writable_dir(folder: Path, what: str = "--out-dir") -> None:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder} is a file; give a folder")
    _refuse_file_ancestor(folder, folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{what} {folder} could not be created ({exc.strerror or exc}); choose another folder") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"{what} {folder} cannot be written (permission denied)")


def image_paths(out: Path, count: int) -> list[Path]:
    """out.png for one image; out-0.png, out-1.png, ... for several."""
    out = Path(out)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(count)]


def save_png(path: Path, image: np.ndarray, metadata: dict, what: str = "output file") -> None:
    """Save uint8 [H, W, 3] as PNG with ``maskst`` (JSON) and ``parameters`` text chunks, atomically
    (:func:`maskst.contract.files.atomic_output`: normal file mode, no partial file, InputError naming ``what`` and
    the path when it cannot be written)."""
    path = Path(path)
    info = PngInfo()
    info.add_text("maskst", json.dumps(metadata, sort_keys=True))
    info.add_text("parameters", f"{metadata.get('prompt', '')}\nNegative prompt: {metadata.get('negative_prompt', '')}\n"
                  + ", ".join(f"{k}: {v}" for k, v in metadata.items() if k not in ("prompt", "negative_prompt")))
    # encoded in memory first, so only the file's own errors read as "could not be written"
    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, format="PNG", pnginfo=info)
    with atomic_output(path, what) as f:
        f.write(encoded.getbuffer())


def region_metadata(config, result) -> list[dict]:
    """Per region: style, mask, content, scale factor, the method it ran, its masked-element count and
    the fraction of output pixels its mask covers."""
    scales = config.region_scale_values()
    return [{"style": str(region.style), "mask": str(region.mask), "content": region.content, "scale": scales[i],
             "method": result.region_methods[i].value, "masked_elements": int(result.region_masks[i].sum()),
             "coverage": round(result.region_coverage[i], 6)} for i, region in enumerate(config.regions)]


def generation_metadata(config, result, pipeline) -> dict:
    """The PNG metadata of one generation (the ``maskst`` JSON text chunk): request, method that ran, model
    family, engines (and ``regions``, for a regional request; the style input's facts, e.g. StyleShot's
    ``shuffle_seed``). ``config`` as it ran (sizes resolved:
    ``MaskstPipeline.resolve``)."""
    config = pipeline.resolve(config)
    meta = {
        "prompt": config.prompt, "negative_prompt": config.negative_prompt, "content": config.content,
        "method": result.method.value, "mask_mode": config.mask_mode.value, "theta": config.theta,
        "masked_elements": result.masked_elements, "scale": config.scale, "content_scale": config.content_scale,
        "target_blocks": list(config.target_blocks), "seed": config.seed, "steps": config.steps,
        "guidance": config.guidance, "scheduler": result.scheduler, "height": config.height, "width": config.width,
        "init_latents": str(config.init_latents) if config.init_latents else None,
        "style": [str(p) for p in config.style], "family": pipeline.family.name, "engines": str(pipeline.manifest.folder),
        "engines_manifest": pipeline.manifest.digest, "precision": pipeline.manifest.precision,
        "backend": pipeline.backend, "maskst_version": __version__,
        **control_metadata(config),  # image-driven requests only: a text-driven PNG is as before
        **deepcache_metadata(config),  # --deepcache-interval > 1 only: a full-computation PNG is as before
        **result.style_metadata,  # StyleShot engines: style_input, shuffle_seed, style_crop; {} otherwise
    }
    if config.regions:
        meta["regions"] = region_metadata(config, result)
    return meta


def deepcache_metadata(config) -> dict:
    """DeepCache step caching of a request that used it: {"deepcache": {"interval", "branch", "full_steps"}};
    {} for full computation (interval 1)."""
    from maskst.deepcache import CACHE_BRANCH_ID, full_steps

    if config.deepcache_interval == 1:
        return {}
    return {"deepcache": {"interval": config.deepcache_interval, "branch": CACHE_BRANCH_ID,
                          "full_steps": full_steps(config.steps, config.deepcache_interval)}}


def control_metadata(config) -> dict:
    """The control images, their preprocessing and scales of an image-driven request; {} otherwise."""
    if not config.control_image:
        return {}
    count = len(config.control_image)
    return {"control_image": [str(p) for p in config.control_image],
            "control_preprocess": [config.control_preprocess_of(i).value for i in range(count)],
            "control_scale": [config.control_scale_of(i) for i in range(count)]}


def save_control_images(out: Path, config, result) -> list[str]:
    """``--save-control``: the preprocessed control image(s) that conditioned ``result`` (uint8 [H, W, 3],
    exactly what the ControlNet got, times 255), as PNGs (several: OUT-0.png, ...), with their metadata."""
    paths = image_paths(out, len(result.control_images))
    meta = {"maskst_version": __version__, **control_metadata(config)}
    for index, (path, image) in enumerate(zip(paths, result.control_images)):
        save_png(path, image, {**meta, "control_index": index})
    return [str(p) for p in paths]
