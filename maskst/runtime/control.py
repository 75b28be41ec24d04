"""The ControlNet stage of the runtime: control images in, UNet residual inputs out, per denoising step.

What an engines folder has is read from its manifest (``control`` section, written by maskst-export
``--controlnet`` / ``--lineart-model``), never guessed: the ControlNet graphs in export order, the
names of the residuals each returns (= the extra inputs of the ``unet`` graph), and whether the
``lineart`` graph exists. No torch here.

Per request (:meth:`ControlStage.prepare`): each control image is loaded, resized to the output
size and preprocessed (:mod:`maskst.control`; lineart on the ``lineart`` graph), cached by file
identity, preprocessing and size like style embeddings, and turned into ``controlnet_cond`` float32
[2N, 3, H, W] (the same image for every image and both guidance halves, as diffusers' ``prepare_image``
with ``guess_mode=False``; [N, 3, H, W] with guidance off). Per step (:meth:`ControlFeeds.residuals`):
every ControlNet graph runs on the UNet inputs its manifest entry lists (``reads``: ``sample`` /
``timestep`` / ``text_embeddings``, or for StyleShot's content-fusion encoder ``ip_tokens``, the style
tokens) and its residuals are summed in order (diffusers' ``MultiControlNetModel``). A request without control image on a UNet that takes residuals
feeds zeros once (the skips stay exactly as without ControlNet).
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np

from maskst.control import (
    ControlPreprocess,
    canny,
    control_tensor,
    lineart_image,
    lineart_input,
    load_control_image,
    resize_control,
)
from maskst.engines.manifest import Manifest
from maskst.errors import InputError

CONTROL_CACHE_SIZE = 16  # preprocessed control images kept (uint8 [H, W, 3]: 768 KB at 512 px)
EXPORT_HINT = "maskst-export ... --controlnet CONTROLNET_FOLDER"
DEFAULT_READS = ("sample", "timestep", "text_embeddings")  # engines written before "reads" was recorded


def control_section(manifest: Manifest) -> dict:
    """The manifest's ``control`` section ({"controlnets": [...], "lineart": {...} or None}); empty for
    engines exported without (or before) ControlNet support."""
    section = manifest.data.get("control") or {}
    return {"controlnets": list(section.get("controlnets") or []), "lineart": section.get("lineart")}


def control_graphs(manifest: Manifest) -> tuple[str, ...]:
    """Names of the control graphs an engines folder has (ControlNets in order, then lineart)."""
    section = control_section(manifest)
    names = [entry["graph"] for entry in section["controlnets"]]
    if section["lineart"]:
        names.append(section["lineart"]["graph"])
    return tuple(names)


def check_control_request(manifest: Manifest, config) -> None:
    """InputError naming the fix, before any work, for a request these engines cannot serve: control
    images without a ControlNet, more control images than ControlNets, lineart without its graph."""
    section = control_section(manifest)
    count, nets = len(config.control_image), len(section["controlnets"])
    if count and not nets:
        raise InputError(f"--control-image given, but the engines {manifest.folder} have no ControlNet: export them "
                         f"with {EXPORT_HINT} (a diffusers ControlNetModel folder for this base model)")
    if count > nets:
        raise InputError(f"{count} control images given; the engines {manifest.folder} have {nets} ControlNet(s) "
                         f"({', '.join(e['graph'] for e in section['controlnets'])}): one control image per ControlNet, "
                         "in export order")
    for index in range(count):
        if config.control_preprocess_of(index).needs_lineart and not section["lineart"]:
            raise InputError(f"--control-preprocess {config.control_preprocess_of(index).value} needs the lineart "
                             f"graph, which the engines {manifest.folder} do not have: export them with "
                             "maskst-export ... --lineart-model sk_model.pth (lllyasviel/Annotators)")


@dataclasses.dataclass(frozen=True)
class ControlFeeds:
    """The control inputs of one request; :meth:`residuals` gives the UNet's residual inputs of one step."""

    stage: "ControlStage"
    names: tuple[str, ...]  # the UNet's residual inputs (empty: a UNet without them)
    zeros: dict[str, np.ndarray]  # residual inputs without control (all zeros)
    # (graph, controlnet_cond [B, 3, H, W] (B = 2N, or N without guidance), scale [1], the UNet inputs it reads)
    conds: list[tuple[str, np.ndarray, np.ndarray, tuple[str, ...]]]
    images: tuple[np.ndarray, ...]  # uint8 [H, W, 3]: what conditioned the result, per control image

    @property
    def active(self) -> bool:
        return bool(self.conds)

    def residuals(self, unet_feed: dict[str, np.ndarray], check_inputs: bool = False) -> dict[str, np.ndarray]:
        """{residual name: float32 [B, c, h/s, w/s]} for one UNet call (``unet_feed``: that call's inputs,
        which each ControlNet reads by name: ``sample``, ``timestep``, ``text_embeddings`` or ``ip_tokens``):
        the sum over this request's ControlNets, or zeros. One ControlNet: its output buffers themselves
        (valid until its next call)."""
        if not self.conds:
            return self.zeros
        total: dict[str, np.ndarray] | None = None
        for graph, cond, scale, reads in self.conds:
            feed = {name: unet_feed[name] for name in reads}
            out = self.stage.run_graph(graph, {**feed, "controlnet_cond": cond, "conditioning_scale": scale},
                                       check_inputs=check_inputs)
            if total is None:
                total = {name: out[name] for name in self.names}
                if len(self.conds) > 1:
                    total = {name: value.copy() for name, value in total.items()}
            else:
                for name in self.names:
                    total[name] += out[name]
        return total


class ControlStage:
    """Control-image preparation and ControlNet calls for one pipeline (its runners and callbacks)."""

    def __init__(self, manifest: Manifest, unet_spec, run_graph):
        section = control_section(manifest)
        self.manifest = manifest
        self.controlnets = [entry["graph"] for entry in section["controlnets"]]
        self.reads = [tuple(entry.get("reads") or DEFAULT_READS) for entry in section["controlnets"]]
        self.lineart = section["lineart"]["graph"] if section["lineart"] else None
        self.unet_spec = unet_spec
        residuals = {name for entry in section["controlnets"] for name in entry["residuals"]}
        self.residual_names = tuple(t.name for t in unet_spec.inputs if t.name in residuals)  # the UNet's order
        self.run_graph = run_graph
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._zeros: dict[tuple, dict[str, np.ndarray]] = {}

    def clear(self) -> None:
        self._cache.clear()

    @staticmethod
    def _file_key(path: Path) -> tuple | None:
        try:
            stat = Path(path).stat()
        except OSError:
            return None  # not cached: loading names the problem
        return (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)

    def control_image(self, path: Path, preprocess: ControlPreprocess, height: int, width: int) -> np.ndarray:
        """uint8 [height, width, 3]: the preprocessed control image, cached by file identity, preprocessing and size."""
        identity = self._file_key(path)
        key = None if identity is None else (identity, preprocess.value, height, width)
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        rgb = resize_control(load_control_image(path), height, width, name=f"control image {path}")
        if preprocess is ControlPreprocess.CANNY:
            rgb = canny(rgb)
        elif preprocess.needs_lineart:
            line = self.run_graph(self.lineart, {"image": lineart_input(rgb)})["line"]
            rgb = lineart_image(line, invert=preprocess is ControlPreprocess.LINEART_INVERTED)
        rgb.setflags(write=False)
        if key is not None:
            self._cache[key] = rgb
            if len(self._cache) > CONTROL_CACHE_SIZE:
                self._cache.popitem(last=False)
        return rgb

    def zero_residuals(self, n: int, h: int, w: int, rows: int) -> dict[str, np.ndarray]:
        """All-zero residual inputs for a UNet that takes them (read only, shared across requests); ``rows``: the
        UNet's batch rows per image (2 with guidance, 1 without)."""
        key = (n, rows, h, w)
        if key not in self._zeros:
            shapes = self.unet_spec.shapes({"N": n, "B": rows * n, "h": h, "w": w})
            zeros = {}
            for name in self.residual_names:
                array = np.zeros(shapes[name], np.float32)
                array.setflags(write=False)
                zeros[name] = array
            self._zeros[key] = zeros
        return self._zeros[key]

    def prepare(self, config, n: int, h: int, w: int, rows: int) -> ControlFeeds:
        """The control inputs of one request (``check_control_request`` has passed): preprocessed control
        images, ``controlnet_cond`` per ControlNet, zero residuals for a request without control image. ``rows``:
        the UNet's batch rows per image (2: both guidance halves; 1: guidance off, the positive half alone)."""
        conds, images = [], []
        for index, path in enumerate(config.control_image):
            rgb = self.control_image(path, config.control_preprocess_of(index), config.height, config.width)
            images.append(rgb)
            cond = np.ascontiguousarray(np.repeat(control_tensor(rgb), rows * n, axis=0))
            conds.append((self.controlnets[index], cond, np.array([config.control_scale_of(index)], np.float32),
                          self.reads[index]))
        return ControlFeeds(self, self.residual_names, self.zero_residuals(n, h, w, rows) if self.residual_names else {},
                            conds, tuple(images))
