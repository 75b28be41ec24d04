"""The maskst runtime: encoders -> fused masking + projection -> denoising loop -> VAE, on runners.

No torch here: numpy, the runners, the numpy schedulers, PIL and the tokenizers. Sessions are
created once per :class:`MaskstPipeline` and reused across requests; the content embedding of a
content text, the prompt embeddings of a prompt pair and the unconditional image tokens are cached.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from maskst.deepcache import DEEP_GRAPH, EXPORT_FLAG, FEATURE, SHALLOW_GRAPH, is_full_step
from maskst.engines.manifest import Manifest, load_manifest
from maskst.errors import EngineError, InputError, NonFiniteError
from maskst.families import family_named
from maskst.generation import (
    GenerationConfig,
    effective_method,
    layer_scales,
    plus_method_error,
    starting_noise,
)
from maskst.images import preprocessor_params_from_config
from maskst.runtime.backends import RunnerOptions, parse_backend
from maskst.runtime import regional
from maskst.runtime.control import ControlStage, check_control_request, control_graphs
from maskst.contract.wire import MaskMode, Method, scheduler_name_from_config
from maskst.runtime.schedulers import Scheduler, make_scheduler
from maskst.runtime.style_inputs import STYLE_CACHE_SIZE, style_input_for  # noqa: F401 (STYLE_CACHE_SIZE re-exported)
from maskst.tokenization import load_tokenizer, tokenize


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    images: np.ndarray  # uint8 [N, H, W, 3]
    mask: np.ndarray  # bool [D]: image-embedding elements zeroed (all False unless method maskst); regions: union
    method: Method  # the method that ran (see generation.effective_method)
    scheduler: str
    timings_ms: dict[str, float]
    region_masks: np.ndarray | None = None  # regional requests: bool [R, D], each region's zeroed elements
    region_methods: tuple[Method, ...] = ()  # regional requests: the method each region ran
    region_coverage: tuple[float, ...] = ()  # regional requests: fraction of output pixels each mask covers
    control_images: tuple[np.ndarray, ...] = ()  # uint8 [H, W, 3] per control image: what conditioned the result
    style_metadata: dict = dataclasses.field(default_factory=dict)  # the style input's facts (StyleShot: shuffle seed)

    @property
    def masked_elements(self) -> int:
        """Zeroed embedding elements (regional requests: summed over the regions)."""
        return int(self.mask.sum() if self.region_masks is None else self.region_masks.sum())


def _check_finite(stage: str, array: np.ndarray, hint: str = "") -> None:
    if not np.all(np.isfinite(array)):
        raise NonFiniteError(f"stage {stage} produced NaN or infinity{hint}; nothing was written")


def check_deepcache_request(manifest: Manifest, interval: int | None) -> None:
    """EngineError naming the fix when a request asks for DeepCache (``deepcache_interval`` > 1) and the engines
    have no ``unet_deep`` / ``unet_shallow`` graph (exported without ``maskst-export --deepcache``). The request's
    own conflicts (a control image) are refused by ``GenerationConfig.validate``."""
    if interval == 1:
        return
    missing = [g for g in (DEEP_GRAPH, SHALLOW_GRAPH) if g not in manifest.data["graphs"]]
    if missing:
        # interval None: a DeepCache pipeline whose caller gave no interval (MaskstPipeline(deepcache=True))
        asked = "DeepCache (--deepcache-interval > 1)" if interval is None else f"--deepcache-interval {interval}"
        raise EngineError(f"{asked}: the engines {manifest.folder} have no "
                          f"{' / '.join(missing)} graph; re-export them with maskst-export {EXPORT_FLAG} "
                          "(or run with --deepcache-interval 1)")


class PipelineCallback:
    """Observer of one pipeline (diffusers' ``callback_on_step_end``, widened to every graph call).

    Subclass and override what you need; register with ``MaskstPipeline(callbacks=[...])`` or
    :meth:`MaskstPipeline.add_callback`. Benchmarks, the profiler and progress bars use these instead
    of wrapping runners. Every method is called on the pipeline's thread, synchronously.
    """

    def on_infer_inputs(self, graph: str, feed: dict[str, np.ndarray]) -> None:
        """Right before :meth:`on_infer_start`, with the call's inputs (read only; benchmarks take the shapes)."""

    def on_infer_start(self, graph: str) -> None:
        """Right before one call of graph ``graph`` (a name of the engines' manifest)."""

    def on_infer_end(self, graph: str) -> None:
        """Right after that call returned (host outputs ready)."""

    def on_step_end(self, step: int, total: int, timestep: float, latents: np.ndarray) -> None:
        """After denoising step ``step`` (1-based) of ``total``; ``latents`` float32 [N, C, h, w] (read only)."""


class _Progress(PipelineCallback):
    def __init__(self, progress):
        self.progress = progress

    def on_step_end(self, step, total, timestep, latents):
        self.progress(step, total)


class MaskstPipeline:
    """Style transfer on an engines folder. Use as a context manager or call close().

    ``deepcache``: a pipeline for DeepCache requests (``--deepcache-interval N``; True, or the interval N > 1, which
    the error for engines without DeepCache graphs names): it loads ``unet_deep`` and
    ``unet_shallow`` instead of the plain ``unet`` (one full UNet in memory, not two), and runs a request with
    interval 1 on ``unet_deep`` every step (the same UNet computation, its feature unused). Without it the
    plain ``unet`` runs interval-1 requests, and the DeepCache graphs load on the first request that asks for
    them.

    ``compile_cache`` / ``compile_cache_limit_gb``: the compiled-model caches and the most disk each may take
    (:class:`~maskst.runtime.backends.RunnerOptions`)."""

    def __init__(self, engines: Path, backend: str = "ort-cpu", verify_hashes: bool = True,
                 threads: int | None = None, allow_fallback: bool = False, profile_prefix: str | None = None,
                 compile_cache: Path | bool | None = None, callbacks=(), deepcache: bool | int = False,
                 compile_cache_limit_gb: float | None = None):
        self.manifest = load_manifest(Path(engines), verify_hashes=verify_hashes)
        if deepcache is True:
            check_deepcache_request(self.manifest, None)  # engines without the DeepCache graphs: the export hint
        elif deepcache:  # the interval itself (> 1): the hint names what the user asked for
            check_deepcache_request(self.manifest, int(deepcache))
        deepcache = bool(deepcache)
        # the graph of a full UNet step (noise_pred): the plain unet, or unet_deep on a DeepCache pipeline
        self.unet_graph = DEEP_GRAPH if deepcache else "unet"
        self.backend = backend
        self.callbacks: list[PipelineCallback] = list(callbacks)
        options = RunnerOptions(threads=threads, allow_fallback=allow_fallback, profile_prefix=profile_prefix,
                                compile_cache=compile_cache, compile_cache_limit_gb=compile_cache_limit_gb)
        model = self.manifest.model
        self.layer_names = tuple(model["cross_attention_layers"])
        self.layer_strides = tuple(model["cross_attention_strides"])  # regional masks: each layer's latent stride
        self.max_regions = int(model["max_regions"])
        self.vae_scale_factor = int(model["vae_scale_factor"])
        self.latent_channels = int(model["latent_channels"])
        self.scheduler_config = dict(model["scheduler_config"])
        self.plus = model.get("adapter_kind") == "plus"  # Resampler: hidden states in, no masking
        self.preprocess = preprocessor_params_from_config(
            json.loads((self.manifest.folder / "preprocessor_config.json").read_text()))
        self.family = family_named(model.get("family"))
        # the graph output that embeds the content text: its own graph, or a prompt encoder it shares (SDXL bigG)
        content = model.get("content_embedding", {"graph": "content_encoder", "output": "content_embeds"})
        self.content_graph, self.content_output = content["graph"], content["output"]
        exported = self.manifest.data["graphs"]
        missing = [name for name in self.family.graphs if name not in exported
                   and not (name == "content_encoder" and self.content_graph != name)]
        if missing:
            raise EngineError(f"{self.manifest.folder}: the manifest lists no {', '.join(missing)} graph, which "
                              f"{self.family.title} engines need; rebuild them with maskst-export --force")
        graphs = [name for name in self.family.graphs if name in exported]
        if self.unet_graph != "unet":
            graphs = [name for name in graphs if name != "unet"] + [DEEP_GRAPH, SHALLOW_GRAPH]
        # {graph: tokenizer of its input_ids}, from the family's declaration
        self.tokenizers = {graph: load_tokenizer(self.manifest.folder / folder)
                           for folder, graph in self.family.tokenizers if graph in graphs}
        # an empty negative prompt is all-zero prompt embeddings (diffusers' SDXL force_zeros_for_empty_prompt)
        self.zero_empty_negative = bool(model.get("force_zeros_for_empty_prompt", False))
        runtime_backend = parse_backend(backend)
        graphs = [*graphs, *control_graphs(self.manifest)]  # ControlNets, lineart: as the manifest records
        self.runners = {name: runtime_backend.runner(self.manifest, name, options) for name in graphs}
        # the DeepCache graphs load on the first request that asks for them (a second full UNet in memory)
        self._backend, self._runner_options = runtime_backend, options
        for runner in self.runners.values():
            runner.activate()
        self._content_cache: dict[str, np.ndarray] = {}
        # style embeddings by file identity (the family's style input: CLIP image encoder, StyleShot patches):
        # a sweep (StyleBench: 40 contents x 490 references) encodes each reference once, and an edited
        # file (new mtime or size) is encoded again
        self.style = style_input_for(self.family.style_input, self)
        self._prompt_cache: collections.OrderedDict = collections.OrderedDict()
        self._uncond_tokens: np.ndarray | None = None
        self.control = ControlStage(self.manifest, self.unet_spec, self.run_graph)
        # the denoising graphs take B = N, the positive half alone, when guidance is off; engines exported before
        # that rule take B = 2 N only and run both halves
        self.unguided_batch = self.manifest.unguided_batch

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def unet_spec(self):
        """The IO spec of the UNet's inputs (``unet``; ``unet_deep`` has the same inputs)."""
        return self.runners[self.unet_graph].spec

    @property
    def max_images(self) -> int:
        """The most images one denoising batch holds: the UNet's N range (``maskst-export --max-batch``; TensorRT
        profiles and preallocated buffers are sized for it). :meth:`generate` runs larger requests in batches."""
        return self.unet_spec.dim_range("N").max

    def image_batches(self, num_images: int) -> list[int]:
        """The batch sizes a request of ``num_images`` runs as: one batch when it fits (:attr:`max_images`), else
        the fewest batches that hold it, as even as they can be (5 on engines built for 4: 3 + 2, so that no
        batch falls below an engine's minimum when a larger one would not)."""
        count = -(-num_images // self.max_images)
        base, extra = divmod(num_images, count)
        return [base + 1] * extra + [base] * (count - extra)

    def guidance_rows(self, config: GenerationConfig) -> int:
        """UNet batch rows per image: 2 with classifier-free guidance (negative half, then positive), 1 without
        (diffusers' rule at guidance <= 1: ``config.guided``), as diffusers runs it; 2 on engines exported before
        the UNet took B = N (:attr:`unguided_batch`), which then take the positive half's prediction alone."""
        return 2 if config.guided or not self.unguided_batch else 1

    def deepcache_runners(self):
        """(unet_deep runner, unet_shallow runner), created and activated on first use (check_request has
        checked that the manifest has both graphs)."""
        for name in (DEEP_GRAPH, SHALLOW_GRAPH):
            if name not in self.runners:
                runner = self._backend.runner(self.manifest, name, self._runner_options)
                runner.activate()
                self.runners[name] = runner
        return self.runners[DEEP_GRAPH], self.runners[SHALLOW_GRAPH]

    def prepare_denoiser(self, config: GenerationConfig, n: int, h: int, w: int, rows: int) -> None:
        """Load the denoising graphs of a request (N images, latent h x w) for its shapes, before any encoder runs.

        The UNet is the largest graph, and a backend that compiles per input shape (OpenVINO) holds its weights
        twice while loading it (the cached blob and the repacked copy: full SD 1.5 UNet in f32, 6.9 GB for a
        moment, 3.5 GB after); loading it first keeps that moment from stacking on the encoders' resident
        weights. Later requests of the same shapes find it loaded; ONNX Runtime has nothing to do here.
        Graphs with dimensions of their own (ControlNet residual inputs) are loaded at their first call.
        ``rows``: the UNet's batch rows per image (:meth:`guidance_rows`).
        """
        dims = {"N": n, "B": rows * n, "h": h, "w": w, "R": max(1, len(config.regions))}
        runners = self.deepcache_runners() if config.deepcache_interval > 1 else (self.runners[self.unet_graph],)
        for runner in runners:
            if set(runner.spec.dims) <= set(dims):
                shapes = runner.spec.shapes(dims)
                runner.prepare({t.name: shapes[t.name] for t in runner.spec.inputs})

    def add_callback(self, callback: PipelineCallback) -> None:
        self.callbacks.append(callback)

    def run_graph(self, graph: str, feed: dict[str, np.ndarray], check_inputs: bool = True) -> dict[str, np.ndarray]:
        """One call of one graph's runner, announced to the callbacks. Outputs are the runner's
        reused buffers: copy what must outlive the next call of the same graph."""
        for callback in self.callbacks:
            callback.on_infer_inputs(graph, feed)
            callback.on_infer_start(graph)
        out = self.runners[graph].infer(feed, check_inputs=check_inputs)
        for callback in self.callbacks:
            callback.on_infer_end(graph)
        return out

    def clear_caches(self) -> None:
        """Forget cached prompt, content and style embeddings: the next request runs every encoder."""
        self._prompt_cache.clear()
        self._content_cache.clear()
        self.style.cache.clear()
        self.control.clear()

    def close(self) -> None:
        for runner in self.runners.values():
            runner.deactivate()

    # ---------------------------------------------------------------- checks before any compute

    def resolve(self, config: GenerationConfig) -> GenerationConfig:
        """The request with the sizes it leaves open (None) set to the engines' family default
        (SD 1.5: 512, SDXL: 1024). What :meth:`generate` runs and what PNG metadata should record."""
        return config.sized(self.family.default_size)

    def check_request(self, config: GenerationConfig) -> Scheduler:
        """Validate a request against these engines (sizes, batch, profile ranges) before any work;
        returns the request's scheduler (built from the base config, which validates its options).
        Open sizes are checked as the family's default (:meth:`resolve`)."""
        config = self.resolve(config)
        config.validate(self.vae_scale_factor)
        f = self.vae_scale_factor
        unet = self.unet_spec
        # the UNet's h / w are latent sizes: the message multiplies them back to the pixels the user gave; more
        # images than one batch holds run as several batches (generate), so each batch's size is what is checked
        for batch in sorted(set(self.image_batches(config.num_images))):
            unet.check_dims({"N": batch, "h": config.height // f, "w": config.width // f},
                            what={"N": "num_images" if batch == config.num_images else "a batch's num_images",
                                  "h": "height", "w": "width"}, scale={"h": (f, "px"), "w": (f, "px")})
        if config.regions:
            regional.check_region_count(config, self.max_regions, unet)
        if config.method not in self.family.methods:
            raise InputError(f"method {config.method.value!r} does not run on {self.family.title} engines; choose one "
                             f"of: {', '.join(m.value for m in self.family.methods)}")
        self.style.check(config)
        if self.plus and config.method is not Method.IP_ADAPTER:
            raise InputError(plus_method_error(config.method))
        if config.layer_scales is not None or config.target_blocks:
            layer_scales(self.layer_names, config)
        check_control_request(self.manifest, config)
        check_deepcache_request(self.manifest, config.deepcache_interval)
        return make_scheduler(config.scheduler or scheduler_name_from_config(self.scheduler_config), self.scheduler_config)

    def _generate_in_batches(self, config: GenerationConfig, style_images, latents: np.ndarray | None,
                             progress) -> GenerationResult:
        """A request for more images than one batch holds (:attr:`max_images`), run as consecutive batches
        (:meth:`image_batches`), each on its slice of the request's initial noise [N, C, h, w]. Image i is thus the
        image one batch of all N would make from the same noise, to float rounding (a batch's matrix products may
        round differently at another batch size); everything but the noise is the same for every image of a
        request. Timings are summed over the batches (``unet_step``: their mean); the progress callback sees one
        run of ``batches x steps`` steps."""
        self.check_request(config)  # the whole request refused before the first batch runs
        latents = self._initial_latents(config, latents)
        sizes = self.image_batches(config.num_images)
        parts, start = [], 0
        for k, size in enumerate(sizes):
            batch = dataclasses.replace(config, num_images=size, init_latents=None)
            step = None if progress is None else (
                lambda i, total, done=k: progress(done * total + i, len(sizes) * total))
            parts.append(self.generate(batch, style_images, latents[start:start + size], step))
            start += size
        timings = {name: sum(p.timings_ms.get(name, 0.0) for p in parts) for name in parts[0].timings_ms}
        timings["unet_step"] = float(np.mean([p.timings_ms["unet_step"] for p in parts]))
        return dataclasses.replace(parts[0], images=np.concatenate([p.images for p in parts]), timings_ms=timings)

    def _initial_latents(self, config: GenerationConfig, latents: np.ndarray | None) -> np.ndarray:
        """The request's initial noise [N, C, h, w] before the init sigma: ``latents`` checked against the request's
        shape, else ``config.init_latents`` or the seed's (:func:`starting_noise`)."""
        f = self.vae_scale_factor
        shape = (config.num_images, self.latent_channels, config.height // f, config.width // f)
        if latents is None:
            return starting_noise(config, shape)
        if latents.shape != shape:
            raise InputError(f"latents have shape {list(latents.shape)}; this request needs {list(shape)}")
        return latents

    # ---------------------------------------------------------------- stages

    @staticmethod
    def check_finite(stage: str, array: np.ndarray, hint: str = "") -> None:
        """NonFiniteError naming ``stage`` if ``array`` holds NaN or infinity."""
        _check_finite(stage, array, hint)

    def encode_style(self, images) -> np.ndarray:
        """float32 [1, D] (Plus: [1, T, H]): mean CLIP image embedding of the style images (PIL).
        Engines of a family with another style input (StyleShot): EngineError."""
        return self._clip_style().encode_images(images)

    def encode_style_files(self, paths) -> np.ndarray:
        """:meth:`encode_style` of image files, cached by file identity (path, size, mtime)."""
        return self._clip_style().encode_files(paths)

    def _clip_style(self):
        if not hasattr(self.style, "encode_images"):
            raise EngineError(f"{self.manifest.folder}: {self.family.title} engines have no CLIP image encoder "
                              f"(their style input is {self.family.style_input!r})")
        return self.style

    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._clip_style().encode_pixels(pixels)

    def encode_content(self, text: str) -> np.ndarray:
        """float32 [1, D] content embedding, cached per text: the manifest's content graph output
        (``content_encoder.content_embeds``; SDXL with the bigG adapter ``text_encoder_2.text_embeds``)."""
        if text not in self._content_cache:
            graph = self.content_graph
            ids = tokenize(self.tokenizers[graph], [text], "content text", self.runners[graph].spec.inputs[0].shape[1])
            embeds = self.run_graph(graph, {"input_ids": ids})[self.content_output].copy()
            _check_finite(graph, embeds)
            self._content_cache[text] = embeds
        return self._content_cache[text]

    def prompt_inputs(self, prompt: str, negative: str | None) -> dict[str, np.ndarray]:
        """The UNet's text inputs of a (negative, prompt) pair, negative first, cached for recent pairs:
        ``{UNet input: float32 [2, ...]}`` from the family's prompt encoders (SD 1.5:
        ``text_embeddings`` [2, 77, 768]; SDXL: ``text_embeddings`` [2, 77, 2048] (both encoders,
        concatenated) and ``text_embeds`` [2, 1280]). An empty negative prompt is all zeros when the
        manifest says ``force_zeros_for_empty_prompt`` (as diffusers does for SDXL). ``negative`` None (guidance
        off): the prompt's inputs alone, [1, ...], as diffusers encodes no negative prompt then."""
        key = (prompt, negative)
        if key not in self._prompt_cache:
            zero_negative = self.zero_empty_negative and negative == ""
            texts = [("prompt", prompt)] if negative is None or zero_negative else [("negative prompt", negative),
                                                                                      ("prompt", prompt)]
            parts: dict[str, list[np.ndarray]] = {}
            for encoder in self.family.prompt_encoders:
                graph = encoder.graph
                length = self.runners[graph].spec.inputs[0].shape[1]
                ids = np.concatenate([tokenize(self.tokenizers[graph], [text], what, length) for what, text in texts])
                out = self.run_graph(graph, {"input_ids": ids})
                for output, unet_input in encoder.outputs:
                    embeds = out[output]
                    _check_finite(graph, embeds)
                    if zero_negative:
                        embeds = np.concatenate([np.zeros_like(embeds), embeds])
                    parts.setdefault(unet_input, []).append(embeds.copy())
            self._prompt_cache[key] = {name: np.concatenate(arrays, axis=-1) for name, arrays in parts.items()}
            if len(self._prompt_cache) > 32:
                self._prompt_cache.popitem(last=False)
        return self._prompt_cache[key]

    def encode_prompts(self, prompt: str, negative: str) -> np.ndarray:
        """float32 [2, 77, C]: (negative, prompt) ``text_embeddings`` (see :meth:`prompt_inputs`)."""
        return self.prompt_inputs(prompt, negative)["text_embeddings"]

    def condition(self, image_embeds: np.ndarray, content_embeds: np.ndarray, method: Method,
                  mode: MaskMode, theta: float, content_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """(ip_tokens float32 [1, k, C], mask bool [1, D]) from the fused conditioner graph."""
        if self.plus:  # the Resampler projection alone
            tokens = self.run_graph("image_conditioner", {"image_embeds": image_embeds})["ip_tokens"]
            return tokens.copy(), np.zeros(image_embeds.shape[:1] + image_embeds.shape[-1:], dtype=bool)
        out = self.run_graph("image_conditioner", {
            "image_embeds": image_embeds, "content_embeds": content_embeds,
            "method": np.array([method.index], np.int64), "mask_mode": np.array([mode.index], np.int64),
            "theta": np.array([theta], np.float32), "content_scale": np.array([content_scale], np.float32),
        })
        return out["ip_tokens"].copy(), out["mask"].copy()

    def _zero_content(self) -> np.ndarray:
        """float32 [1, D]: a zero content embedding (plain methods, the unconditional tokens); Plus: unused."""
        inputs = self.runners["image_conditioner"].spec.inputs
        return np.zeros((1,) + tuple(inputs[1 if len(inputs) > 1 else 0].shape[1:]), np.float32)

    def uncond_tokens(self) -> np.ndarray:
        """Image tokens of the negative half, a constant of the adapter (computed once).

        ImageProj(0) for the base adapter; for Plus, as diffusers does, the projection of the
        image encoder's hidden states of an all-zero pixel input.
        """
        if self._uncond_tokens is None:
            embeds = self.style.uncond_embeds()
            self._uncond_tokens, _ = self.condition(embeds, self._zero_content(), Method.IP_ADAPTER, MaskMode.KMEANS,
                                                    0.7, 0.0)
        return self._uncond_tokens

    # ---------------------------------------------------------------- one request

    def generate(self, config: GenerationConfig, style_images=None, latents: np.ndarray | None = None,
                 progress=None) -> GenerationResult:
        """Run one request. ``style_images``: PIL images (default: load ``config.style``).

        ``latents``: diffusers' initial noise [N, C, h, w] before the init sigma; default from
        ``config.init_latents`` or the seed. ``progress``: optional callable(step, total). A request for more
        images than the engines' batch holds runs as several batches (:meth:`image_batches`).
        """
        config = self.resolve(config)
        if config.num_images > self.max_images:
            return self._generate_in_batches(config, style_images, latents, progress)
        scheduler = self.check_request(config)
        timings: dict[str, float] = {}
        clock = time.perf_counter
        f = self.vae_scale_factor
        n, h, w = config.num_images, config.height // f, config.width // f
        latents = self._initial_latents(config, latents)
        if config.regions and style_images is not None:
            raise InputError("a regional request reads each region's style image from --region; pass no style_images")
        if style_images is None and not config.style and not config.regions:
            raise InputError("no style image given; pass --style IMAGE (or --region STYLE MASK CONTENT)")
        pixels = regional.prepare_masks(config) if config.regions else None  # mask files checked before any work
        method = effective_method(config, self.family.plain_method)
        callbacks = self.callbacks + ([_Progress(progress)] if progress is not None else [])

        t0 = clock()
        rows = self.guidance_rows(config)  # the UNet's batch: [negative] * N + [prompt] * N, or the prompt's N alone
        control = self.control.prepare(config, n, h, w, rows)  # control images first (a bad file fails before any encoder)
        if control.active:
            timings["control_preprocess"] = (clock() - t0) * 1e3
        self.prepare_denoiser(config, n, h, w, rows)  # largest graph first (memory; a no-op once loaded)
        t0 = clock()
        text = self.prompt_inputs(config.prompt, config.negative_prompt if rows == 2 else None)  # [rows, ...]
        timings["text_encoder"] = (clock() - t0) * 1e3
        if config.regions:  # R styles, each with its own content text: R rows of one conditioner call
            e_i, e_c, region_methods = regional.encode_regions(self, config, timings)
        else:
            t0 = clock()
            e_i = self.style.embeds(config, style_images)
            timings[self.style.graph] = (clock() - t0) * 1e3  # image_encoder (StyleShot: style_encoder)
            t0 = clock()
            e_c = self.encode_content(config.content) if not method.is_plain else self._zero_content()
            timings["content_encoder"] = (clock() - t0) * 1e3
        t0 = clock()
        tokens, mask = self.condition(e_i, e_c, method, config.mask_mode, config.theta, config.content_scale)
        uncond = self.uncond_tokens() if rows == 2 else None  # the negative half's tokens, with guidance only
        timings["image_conditioner"] = (clock() - t0) * 1e3
        _check_finite("image_conditioner", tokens)

        # [neg]*N + [prompt]*N (rows 2) or [prompt]*N (rows 1); the family's size inputs (SDXL time_ids) are the
        # same for every row
        text_inputs = {name: np.repeat(value, n, axis=0) for name, value in text.items()}
        size_inputs = {name: np.repeat(row, rows * n, axis=0)
                       for name, row in self.family.size_inputs(config.height, config.width).items()}
        ip_tokens = regional.ip_tokens_feed(uncond, tokens, n)  # [rows N, R, k, C]
        scheduler.set_timesteps(config.steps)
        latents = latents.astype(np.float32) * np.float32(scheduler.init_noise_sigma)
        unet = self.runners[self.unet_graph]
        feed = {**text_inputs, **size_inputs, "ip_tokens": ip_tokens,
                **regional.unet_region_feed(config, self.layer_names, self.layer_strides, h, w, pixels)}
        feed.update(control.zeros)

        unet.spec.check_feed({**feed, "sample": np.concatenate([latents] * rows),
                              "timestep": np.zeros(1, np.float32)})  # once; the loop skips the checks
        interval = config.deepcache_interval
        if interval > 1:  # DeepCache: unet_deep on full steps, unet_shallow (reusing its feature) on the others
            _, shallow = self.deepcache_runners()
            shallow_inputs = [t.name for t in shallow.spec.inputs if t.name != FEATURE]
            feature = None
        guidance = np.float32(config.guidance) if config.guided else None  # None: diffusers' rule, guidance off
        t0 = clock()
        for i, t in enumerate(scheduler.timesteps):
            sample = scheduler.scale_model_input(np.concatenate([latents] * rows) if rows > 1 else latents, t)
            feed["sample"] = sample.astype(np.float32, copy=False)
            feed["timestep"] = np.array([t], dtype=np.float32)
            if control.active:
                feed.update(control.residuals(feed, check_inputs=i == 0))
            if interval == 1:
                noise = self.run_graph(self.unet_graph, feed, check_inputs=False)["noise_pred"]
            elif is_full_step(i, interval):
                out = self.run_graph(DEEP_GRAPH, feed, check_inputs=i == 0)
                noise, feature = out["noise_pred"], out[FEATURE].copy()  # kept for the next cached steps
            else:
                cached = {name: feed[name] for name in shallow_inputs}
                cached[FEATURE] = feature
                noise = self.run_graph(SHALLOW_GRAPH, cached, check_inputs=i == 1)["noise_pred"]
            text_pred = noise[(rows - 1) * n:]  # the prompt's half (rows 2), or the whole batch (rows 1)
            guided = text_pred if guidance is None else noise[:n] + guidance * (text_pred - noise[:n])
            latents = scheduler.step(guided, t, latents)
            for callback in callbacks:
                callback.on_step_end(i + 1, len(scheduler.timesteps), float(t), latents)
        timings["denoise"] = (clock() - t0) * 1e3
        timings["unet_step"] = timings["denoise"] / max(1, len(scheduler.timesteps))
        _check_finite("unet (denoising loop)", latents)

        t0 = clock()
        decoded = self.run_graph("vae_decoder", {"latents": latents.astype(np.float32)})["images"]
        timings["vae_decoder"] = (clock() - t0) * 1e3
        _check_finite("vae_decoder", decoded, hint=" (fp16 VAEs overflow: rebuild with the VAE in fp32)")
        images = (decoded.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
        if config.regions:
            return GenerationResult(images, mask.any(axis=0), method, scheduler.name, timings, region_masks=mask,
                                    region_methods=region_methods, region_coverage=pixels.coverage,
                                    control_images=control.images)
        return GenerationResult(images, mask[0], method, scheduler.name, timings, control_images=control.images,
                                style_metadata=self.style.metadata(config))
