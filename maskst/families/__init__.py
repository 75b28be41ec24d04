"""Model families: one description each (SD 1.5, SDXL), read by the builders and the runtime.

A :class:`ModelFamily` declares once what differs between families: how a base folder is recognised
(``model_index.json`` ``_class_name``), the graphs exported for it (names the exporter's graph
registry and the runtime both use), its tokenizers, how the prompt is encoded (which text graphs,
which of their outputs feed which UNet input), the UNet inputs beyond SD 1.5's and the per-request
ones computed from the image size, default image size and export sizes, the diffusers pipeline the
reference runs, and its pre-flight (checkpoint resolution and checks). The exporter and the runtime
branch on none of these: they read them. Adding a family is one module plus one line in
:data:`FAMILIES`.

A family also names the adapter layout it exports (``adapter_layout``: an h94 IP-Adapter file, or a
StyleShot folder), how the exporter reads that adapter's weights (``adapter_state``), how the runtime
turns style images into the conditioner's input (``style_input``: a name of
``maskst.runtime.style_inputs.STYLE_INPUTS``) and the methods it offers (``methods``; ``plain_method``
is the one that leaves the embedding unchanged, what an empty content text falls back to).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from maskst.contract.wire import Method
from maskst.errors import CheckpointError, EngineError

IP_ADAPTER_LAYOUT = "ip-adapter"  # one h94 IP-Adapter file (--ip-adapter) with a CLIP image encoder folder
STYLESHOT_LAYOUT = "styleshot"  # a StyleShot folder (--styleshot): pretrained_weight/ip.bin + style_aware_encoder.bin
CLIP_METHODS = (Method.IP_ADAPTER, Method.INSTANTSTYLE, Method.MASKST)


def _ip_adapter_state(ckpt) -> dict:
    from maskst.checkpoints import load_adapter_state_dict

    return load_adapter_state_dict(ckpt.ip_adapter)


@dataclasses.dataclass(frozen=True)
class PromptEncoder:
    """One text encoder of the prompt pair: its graph (input ``input_ids`` int64 [B, 77], from the
    tokenizer the family lists for it) and where its outputs go: ``(graph output, UNet input)``.
    Outputs of several encoders for one UNet input are concatenated on the last axis in the order the
    family lists them (SDXL: ``text_embeddings`` [B, 77, 768] ++ [B, 77, 1280] -> [B, 77, 2048])."""

    graph: str
    outputs: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    name: str  # wire name: recorded in the manifest and the PNG metadata
    title: str
    pipeline_classes: tuple[str, ...]  # model_index.json `_class_name` values of its base folders
    graphs: tuple[str, ...]  # exported networks, in export order (keys of maskst.export.graphs.GRAPH_BUILDERS)
    tokenizers: tuple[tuple[str, str], ...]  # (engines-folder subfolder, graph whose input_ids it makes)
    tokenizer_sources: Callable  # CheckpointSet -> {engines subfolder: source tokenizer folder}
    default_size: int  # image side in pixels when a request names none
    reference_pipeline: str  # diffusers pipeline class of the PyTorch reference
    preflight: Callable  # (base, ip_adapter, image_encoder, content_encoder) -> CheckpointSet, or CheckpointError
    prompt_encoders: tuple[PromptEncoder, ...]  # how the (negative, prompt) pair becomes UNet inputs
    prompt_hidden_state: str  # text_encoder output: "last" (last_hidden_state) or "penultimate" (hidden_states[-2])
    unet_added_inputs: Callable  # CheckpointSet -> tuple[TensorSpec, ...]: UNet inputs after text_embeddings, [B, ...]
    size_inputs: Callable  # (height, width) -> {UNet input: float32 [1, k]}: per-request rows (one per guidance half)
    export_sizes: tuple[int, int, int]  # maskst-export's default (min, opt, max) image side in pixels
    reference_options: tuple[tuple[str, object], ...] = ()  # from_pretrained keywords of the reference pipeline
    adapter_layout: str = IP_ADAPTER_LAYOUT  # which adapter checkpoints select this family (with pipeline_classes)
    adapter_state: Callable = _ip_adapter_state  # CheckpointSet -> the adapter state dict graph builders get
    style_input: str = "clip"  # runtime style stage: "clip" (image_encoder graph) or "styleshot" (patches)
    methods: tuple[Method, ...] = CLIP_METHODS  # the --method values its engines run
    plain_method: Method = Method.IP_ADAPTER  # the method that leaves the embedding unchanged

    def export_graphs(self, ckpt) -> tuple[str, ...]:
        """The graphs exported for a checkpoint set: the family's, less ``content_encoder`` when the
        content text is embedded by one of the base's own prompt encoders (SDXL + bigG adapter:
        text_encoder_2's pooled output), so those weights are not exported and loaded twice."""
        return tuple(g for g in self.graphs if not (g == "content_encoder" and ckpt.shared_content_encoder))


def _families() -> dict[str, ModelFamily]:
    from maskst.families.sd15 import SD15
    from maskst.families.sdxl import SDXL
    from maskst.families.styleshot import STYLESHOT

    return {family.name: family for family in (SD15, SDXL, STYLESHOT)}


FAMILIES: dict[str, ModelFamily] = _families()


def family_named(name: str | None) -> ModelFamily:
    """The family an engines manifest names; EngineError for one this maskst does not know."""
    if name not in FAMILIES:
        raise EngineError(f"engines of model family {name!r}: this maskst knows {', '.join(FAMILIES)}; "
                          "rebuild them with maskst-export --force")
    return FAMILIES[name]


def detect_family(base: Path, adapter_layout: str = IP_ADAPTER_LAYOUT) -> ModelFamily:
    """The family of a diffusers base folder, from its ``model_index.json`` ``_class_name``, for an adapter
    of ``adapter_layout`` (an IP-Adapter file, or a StyleShot folder)."""
    path = Path(base) / "model_index.json"
    try:
        class_name = json.loads(path.read_text()).get("_class_name")
    except FileNotFoundError:
        raise CheckpointError(f"base model {base} has no model_index.json; it must be a diffusers pipeline folder") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"base model {path} could not be read as JSON ({exc})") from None
    families = [f for f in FAMILIES.values() if f.adapter_layout == adapter_layout]
    for family in families:
        if class_name in family.pipeline_classes:
            return family
    known = "; ".join(f"{f.name}: {', '.join(f.pipeline_classes)}" for f in families)
    with_adapter = "" if adapter_layout == IP_ADAPTER_LAYOUT else f" with a {adapter_layout} adapter"
    raise CheckpointError(f"base model {path}: _class_name {class_name!r} is not a pipeline maskst exports"
                          f"{with_adapter} ({known})")


def resolve_checkpoints(base, ip_adapter, image_encoder=None, content_encoder=None):
    """Pre-flight of a checkpoint set by its base folder's family: (family, CheckpointSet)."""
    family = detect_family(base)
    return family, family.preflight(base, ip_adapter, image_encoder, content_encoder)
