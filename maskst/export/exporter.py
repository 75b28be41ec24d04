"""Build an engines folder: export every graph, check parity, write the manifest, publish atomically."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from maskst.checkpoints import TOKENIZER_FILES, CheckpointSet
from maskst.contract.files import sha256
from maskst.contract.wire import conditioner_wire_format
from maskst.engines.folder import build_lock, check_destination, publish, staging_folder
from maskst.engines.manifest import Manifest, library_versions, load_manifest, write_manifest
from maskst.engines.onnx_files import save_graph
from maskst.errors import CheckpointError, InputError
from maskst.regions import checkpoint_strides
from maskst.families import IP_ADAPTER_LAYOUT, STYLESHOT_LAYOUT, detect_family
from maskst.export.controlnet import control_manifest, control_sources, with_control
from maskst.export.graphs import DEEPCACHE_GRAPHS, GRAPH_BUILDERS, GRAPH_REVISION
from maskst.export.options import ExportOptions, Precision, Target
from maskst.contract.compare import Comparison, Tolerance, compare_outputs, raise_failures, records_json, run_onnx_cpu
from maskst.contract.spec import GraphSpec

@dataclasses.dataclass(frozen=True)
class ExportRequest:
    base: Path
    ip_adapter: Path | None  # h94 IP-Adapter file (--ip-adapter); None with --styleshot
    content_encoder: Path | None  # None: the family's default (SDXL + bigG adapter: the base's text_encoder_2)
    out: Path
    image_encoder: Path | None = None
    controlnets: tuple[Path, ...] = ()  # diffusers ControlNet folders (--controlnet, in order)
    lineart_model: Path | None = None  # informative-drawings sk_model.pth (--lineart-model)
    force: bool = False
    lock_timeout: float = 0.0
    options: ExportOptions = ExportOptions()
    styleshot: Path | None = None  # StyleShot folder (--styleshot): pretrained_weight/ip.bin + style_aware_encoder.bin

    def adapter(self) -> tuple[str, Path]:
        """(adapter layout, its path): an IP-Adapter file or a StyleShot folder; InputError unless exactly one."""
        if self.styleshot is not None and self.ip_adapter is not None:
            raise InputError("--styleshot and --ip-adapter exclude each other: a StyleShot folder brings its own "
                             "adapter (pretrained_weight/ip.bin)")
        if self.styleshot is not None:
            if self.controlnets:
                raise InputError("--controlnet with --styleshot: StyleShot engines have their own ControlNet (the "
                                 "content-fusion encoder of ip.bin); extra ControlNets are not supported")
            return STYLESHOT_LAYOUT, Path(self.styleshot)
        if self.ip_adapter is None:
            raise InputError("no adapter given: pass --ip-adapter FILE (IP-Adapter) or --styleshot FOLDER (StyleShot)")
        return IP_ADAPTER_LAYOUT, Path(self.ip_adapter)


def _dims(spec: GraphSpec, export: bool) -> dict[str, int]:
    """Dimension values to trace at (export) or to check parity at (not export).

    Latent sizes are traced at an odd value (opt + 1): diffusers' UNet then takes its
    explicit-upsample-size path, so the graph serves every multiple of the VAE factor (as diffusers
    does), not only multiples of the UNet's total downsampling. Parity runs at other values than
    the trace: another batch, the smallest latent height and an odd width.
    """
    dims = {}
    for name, r in spec.dims.items():
        if name in ("h", "w"):
            if export:
                dims[name] = r.opt + 1 if r.opt < r.max else max(r.min, r.opt - 1)
            else:
                dims[name] = r.min if name == "h" else min(r.max, r.min + 1)
        else:  # batch-like: trace at opt, check at another count (the largest, else the smallest)
            dims[name] = r.opt if export else (r.max if r.max != r.opt else r.min)
    return dims


def export_onnx(module, spec: GraphSpec, dims: dict[str, int], path: Path, opset: int) -> None:
    """torch.onnx.export (TorchScript exporter) with names and dynamic axes from the spec.

    Large graphs are re-saved with their weights in one external data file ``<name>.onnx.data``
    (the exporter writes one file per tensor beyond 2 GB).
    """
    import onnx
    import torch

    scratch = path.parent / f".scratch-{path.stem}"
    scratch.mkdir()
    feed = spec.sample_inputs(dims)
    args = tuple(torch.from_numpy(feed[t.name]) for t in spec.inputs)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter warns about every Python-level shape check it freezes; the
        # parity check right after export is what tells whether the trace generalises
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")  # indices are >= 0 here
        torch.onnx.export(
            module, args, str(scratch / "model.onnx"), dynamo=False, opset_version=opset,
            do_constant_folding=True, input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs], dynamic_axes=spec.dynamic_axes(),
        )
    save_graph(onnx.load(str(scratch / "model.onnx"), load_external_data=True), path)
    shutil.rmtree(scratch)


def torch_outputs(module, spec: GraphSpec, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        out = module(*(torch.from_numpy(feed[t.name]) for t in spec.inputs))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return {t.name: o.numpy() for t, o in zip(spec.outputs, out)}


def check_graph_parity(module, spec: GraphSpec, path: Path, feeds: list[dict]) -> list[Comparison]:
    """Run the graph on ONNX Runtime (CPU) and the torch module on the same feeds; compare per output."""
    return compare_outputs(spec.name, [t.name for t in spec.outputs], [torch_outputs(module, spec, f) for f in feeds],
                           run_onnx_cpu(path, feeds), Tolerance(spec.atol, spec.rtol), reference="torch",
                           candidate="onnxruntime-cpu")


def style_preprocessor_config(ckpt: CheckpointSet) -> dict:
    """How style images are preprocessed: the base model's feature_extractor config, as diffusers'
    IP-Adapter path uses it, else CLIP's defaults at the image encoder's resolution. Checked here,
    at export, against the encoder's input size."""
    import json

    from maskst.images import preprocessor_params_from_config

    size = int(ckpt.image_encoder_config.get("image_size", 224))
    path = ckpt.base / "feature_extractor" / "preprocessor_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {"size": size, "crop_size": size}
    crop = preprocessor_params_from_config(config)["crop_size"]
    if tuple(crop) != (size, size):
        raise CheckpointError(
            f"{path}: crop_size {list(crop)} but the image encoder {ckpt.image_encoder} takes {size}x{size} images; "
            "use the feature extractor that belongs to this image encoder"
        )
    return config


def _copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir()
    for name in TOKENIZER_FILES + ("tokenizer.json",):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def preflight_control(ckpt: CheckpointSet, controlnets, lineart_model):
    """(ControlNetInfo per --controlnet folder, the lineart graph builder or None), checked against ``ckpt``."""
    from maskst.control_checkpoints import inspect_controlnet, load_lineart_state
    from maskst.export.lineart import LineartGraph

    infos = tuple(inspect_controlnet(Path(folder), ckpt) for folder in controlnets)
    lineart = LineartGraph(Path(lineart_model), load_lineart_state(Path(lineart_model))) if lineart_model else None
    return infos, lineart


def deepcache_builders(ckpt: CheckpointSet, options: ExportOptions, controlnets) -> list:
    """The DeepCache graphs (``unet_deep``, ``unet_shallow``) that ``--deepcache`` adds; InputError with
    ControlNets (their residuals enter the blocks a cached step skips), CheckpointError for a UNet layout the
    split does not cover. Without ``--deepcache``: none."""
    if not options.deepcache:
        return []
    if controlnets:
        raise InputError("--deepcache with --controlnet (or StyleShot's content-fusion ControlNet): ControlNet "
                         "residuals enter the UNet blocks that DeepCache's cached steps skip; export without one of them")
    from maskst.deepcache import cache_point

    cache_point(ckpt.unet_config)  # the layout check, before any export work
    return [GRAPH_BUILDERS[name] for name in DEEPCACHE_GRAPHS]


def _option_json(value):
    """An export option as the manifest records it: enums by their value, paths as text."""
    if isinstance(value, (tuple, list)):
        return [_option_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value.value if hasattr(value, "value") else value


def export_engines(request: ExportRequest, progress: bool = True,
                   calibrate: Callable[[Path], dict[str, list[dict[str, np.ndarray]]]] | None = None) -> Manifest:
    """Export, check and publish an engines folder. Raises typed errors; leaves no partial folder.

    ``calibrate``: with ``options.int8``, ``folder -> {graph: [feed, ...]}``, the recorded inputs of
    generations on the staged fp32 engines (calibration of the hybrid / full schemes, and the held-out
    cases every scheme's error against fp32 is measured on) (``maskst.runtime.calibration.calibration_recorder``;
    passed in so that the exporter does not import the runtime). The int8 IRs are written and checked
    in the staging folder like every other file: a failed quantization or calibration publishes nothing.
    """
    import json

    if request.options.target is Target.TRT:  # no GPU / no tensorrt: fail before any work, write nothing
        from maskst.engines.tensorrt import require_trt_build_support

        require_trt_build_support()
    layout, adapter = request.adapter()
    family = detect_family(request.base, layout)
    ckpt = family.preflight(request.base, adapter, request.image_encoder, request.content_encoder)
    controlnets, lineart = preflight_control(ckpt, request.controlnets, request.lineart_model)
    controlnets = ckpt.builtin_controlnets + controlnets  # the adapter's own first (StyleShot's content fusion)
    builders = with_control([GRAPH_BUILDERS[name] for name in family.export_graphs(ckpt)], controlnets, lineart)
    options = request.options
    options.validate(ckpt.vae_scale_factor)
    builders += deepcache_builders(ckpt, options, controlnets)
    if options.int8:
        from maskst.engines.int8 import require_nncf

        require_nncf()  # before any work
        if calibrate is None:  # calibration (hybrid, full) and the held-out error check (every scheme) need it
            raise InputError("--int8 needs recorded graph inputs: pass calibrate= "
                             "(maskst.runtime.calibration.calibration_recorder)")
    out = Path(request.out)
    check_destination(out, request.force)
    state = family.adapter_state(ckpt)
    specs = {m.NAME: m.spec(ckpt, options) for m in builders}  # every contract, before any export work
    preprocessor = style_preprocessor_config(ckpt)
    started = time.time()
    with build_lock(out, request.lock_timeout), staging_folder(out) as staging:
        graphs, parity = {}, []
        bar = tqdm(builders, desc="export", unit="graph", disable=not progress)
        for graph_module in bar:
            bar.set_postfix_str(graph_module.NAME)
            spec = specs[graph_module.NAME]
            torch_module = graph_module.build_module(ckpt, state, options)
            path = staging / f"{spec.name}.onnx"
            export_onnx(torch_module, spec, _dims(spec, export=True), path, options.opset)
            results = []
            if options.check_parity:
                dims = _dims(spec, export=False)
                feeds = (graph_module.parity_feeds(spec, dims) if hasattr(graph_module, "parity_feeds")
                         else [spec.sample_inputs(dims, seed=1)])
                results = check_graph_parity(torch_module, spec, path, feeds)
                parity += results
            graphs[spec.name] = {"file": path.name, "spec": spec.to_json(),
                                 "parity": records_json(results)}
            del torch_module
        raise_failures(parity, "graph output(s) differ from the PyTorch reference")
        extra = {}  # --precision fp16 / --target trt: staged graphs converted, plans built, both checked
        if options.precision is Precision.FP16:
            from maskst.engines.fp16 import convert_staged_graphs

            extra["fp16"] = convert_staged_graphs(staging, graphs, options)
        if options.target is Target.TRT:
            from maskst.engines.tensorrt import build_plans

            extra["tensorrt"] = build_plans(staging, graphs, options, previous=out, progress=progress)
        (staging / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
        for folder, source in family.tokenizer_sources(ckpt).items():
            _copy_tokenizer(source, staging / folder)
        scheduler_config = json.loads((ckpt.base / "scheduler" / "scheduler_config.json").read_text())
        sources = {**ckpt.weight_files(), **control_sources(controlnets, lineart)}
        manifest_data = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.time() - started, 1),
            "precision": options.precision.value,
            "target": options.target.value,
            "options": {k: _option_json(v) for k, v in dataclasses.asdict(options).items()},
            "sources": {name: {"path": str(path.resolve()), "sha256": sha256(path)}
                        for name, path in sources.items()},
            "model": {
                "family": family.name,
                "vae_scale_factor": ckpt.vae_scale_factor,
                "latent_channels": int(ckpt.unet_config.get("in_channels", 4)),
                "num_tokens": ckpt.adapter.num_tokens,
                "num_adapters": 1,
                "adapter_kind": ckpt.adapter.kind.value,
                "image_embed_dim": ckpt.image_embed_dim,
                # the graph output that embeds the content text (its own graph, or a prompt encoder's)
                "content_embedding": {"graph": ckpt.content_graph[0], "output": ckpt.content_graph[1]},
                "force_zeros_for_empty_prompt": ckpt.force_zeros_for_empty_prompt,
                "cross_attention_layers": list(ckpt.cross_attention_layers),
                # regional multi-style (maskst.regions): each layer's latent stride, at most max_regions regions
                "cross_attention_strides": list(checkpoint_strides(ckpt)),
                "max_regions": options.max_regions,
                "scheduler_config": scheduler_config,
            },
            "graphs": graphs,
            "graph_revision": GRAPH_REVISION,
            "control": control_manifest(controlnets, lineart),
            "wire_format": {"image_conditioner": conditioner_wire_format()},
            **extra,
            "versions": library_versions(),
        }
        write_manifest(staging, manifest_data)
        if options.int8:  # the pipeline runs on the staged fp32 set; the int8 IRs join it, then the manifest again
            from maskst.engines.int8 import quantize_graphs

            recorded = calibrate(staging)
            manifest_data["int8"] = quantize_graphs(staging, graphs, recorded, options.int8_scheme,
                                                    check=options.check_parity,
                                                    generations=len(options.calibration_prompts))
            write_manifest(staging, manifest_data)  # replaces the fp32 one; records the IR files too
            del recorded
        publish(staging, out)
    return load_manifest(out)
