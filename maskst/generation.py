"""What one generation asks for, validated in one place, shared by the runtime and the reference.

:class:`GenerationConfig` is a frozen dataclass built from CLI flags or a batch-job line; every
check of user-supplied values happens in :meth:`GenerationConfig.validate`. The initial noise
(:func:`initial_noise`) and the per-layer adapter scales (:func:`layer_scales`) are defined here
once, so maskst and the reference pipeline start from the same numbers.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from maskst.control import ControlPreprocess
from maskst.deepcache import MAX_INTERVAL
from maskst.errors import InputError
from maskst.tokenization import check_text
from maskst.contract.wire import SCHEDULER_NAMES, MaskMode, Method, canonical_scheduler_name, parse_enum

DEFAULT_NEGATIVE_PROMPT = ""
# The demo request (the embedded engines, benchmarks): one place.
DEMO_PROMPT = "a photo of a cat"
DEMO_CONTENT = "a house"
DEMO_STYLE = Path(__file__).resolve().parent / "assets" / "style.png"
# The image-driven fields: empty for a text-driven request, which then serialises as before they existed
CONTROL_FIELDS = ("control_image", "control_preprocess", "control_scale")


def _family_sizes() -> str:
    from maskst.families import FAMILIES

    return ", ".join(f"{family.name} {family.default_size}" for family in FAMILIES.values())


_FAMILY_SIZES = _family_sizes()  # "sd15 512, sdxl 1024": the default sizes, from the families (one source)


@dataclasses.dataclass(frozen=True)
class Region:
    """One style region of a regional request (``--region STYLE MASK CONTENT``).

    ``style``: the style image of this region; ``mask``: a black/white image, white = the pixels this
    style conditions (read and binarised as diffusers' ``IPAdapterMaskProcessor`` does, see
    :mod:`maskst.regions`); ``content``: what this style image shows that must not leak (may be
    empty: the region then runs as ``ip-adapter``); ``scale``: this region's adapter scale, a factor
    on the per-layer scales (None: 1, or ``--region-scales``). Values are checked in
    :meth:`GenerationConfig.validate`; the files are read by :func:`maskst.regions.load_region_masks`.
    """

    style: Path
    mask: Path
    content: str = ""
    scale: float | None = None

    KEYS = ("style", "mask", "content", "scale")

    @classmethod
    def parse(cls, value, index: int) -> "Region":
        """A Region from a CLI triple (style, mask, content) or a batch-job object
        ``{"style", "mask", "content", "scale"}``."""
        what = f"region {index + 1}"
        if isinstance(value, Region):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(cls.KEYS)
            if unknown:
                raise InputError(f"{what}: unknown key(s) {sorted(unknown)}; a region has {', '.join(cls.KEYS)}")
            missing = [k for k in ("style", "mask") if not value.get(k)]
            if missing:
                raise InputError(f"{what}: {' and '.join(missing)} missing; give "
                                 '{"style": IMAGE, "mask": MASK_IMAGE, "content": TEXT}')
            scale = value.get("scale")
            if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
                raise InputError(f"{what}: scale={scale!r} must be a number")
            return cls(_path(value["style"], f"{what} style"), _path(value["mask"], f"{what} mask"),
                       value.get("content", "") or "", None if scale is None else float(scale))
        if isinstance(value, (tuple, list)) and len(value) == 3:
            style, mask, content = value
            return cls(_path(style, f"{what} style"), _path(mask, f"{what} mask"), "" if content is None else content)
        raise InputError(f"{what}: {value!r} is not STYLE_IMAGE MASK_IMAGE CONTENT_TEXT (or a "
                         '{"style", "mask", "content", "scale"} object)')

    def to_json(self) -> dict:
        return {"style": str(self.style), "mask": str(self.mask), "content": self.content, "scale": self.scale}


def _field(default, help: str, flag: str | None = None):
    """A GenerationConfig field with its user-facing help: CLI options and job fields derive from it.
    ``...`` as default: required."""
    metadata = {"help": help, "flag": flag}
    if default is ...:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """One style-transfer request.

    ``target_blocks`` selects the cross-attention layers that get the adapter (InstantStyle):
    module-name prefixes such as ``"up_blocks.1"`` or ``"down_blocks.2.attentions.1"``; empty
    means every layer. ``layer_scales`` instead gives one explicit scale per layer (overrides both
    ``scale`` and ``target_blocks``).

    ``height`` / ``width`` None (an option not given) means the model family's default size, which
    only the engines know: :meth:`sized` fills it in (``MaskstPipeline.resolve`` does, with the
    engines' family). A given value is validated as given: 0 is refused, never read as "default".
    """

    prompt: str = _field(..., "What to draw.")
    style: tuple[Path, ...] = _field((), "Style reference image (repeat for several; their CLIP embeddings are averaged).",
                                     flag="--style")
    content: str = _field("", "What the style image shows that must NOT leak (e.g. 'a ship').")
    negative_prompt: str = _field(DEFAULT_NEGATIVE_PROMPT, "Negative prompt (the unconditional half of guidance).")
    method: Method = _field(Method.MASKST, "maskst (mask content elements), instantstyle (subtract the content "
                                           "embedding) or ip-adapter (plain); on StyleShot engines styleshot (plain "
                                           "StyleShot), maskst or instantstyle.")
    mask_mode: MaskMode = _field(MaskMode.KMEANS, "kmeans: exact 2-means split (the paper's default); quantile: "
                                                  "p > quantile(p, theta).")
    theta: float = _field(0.7, "Quantile level for --mask-mode quantile.")
    scale: float = _field(1.0, "IP-Adapter scale.")
    content_scale: float = _field(1.0, "InstantStyle subtraction scale.")
    target_blocks: tuple[str, ...] = _field((), "Only these cross-attention blocks get the adapter (InstantStyle), "
                                                "e.g. up_blocks.1 (repeatable).", flag="--target-block")
    layer_scales: tuple[float, ...] | None = _field(None, "Explicit comma-separated scale per cross-attention layer "
                                                          "(overrides --scale and --target-block).")
    steps: int = _field(30, "Denoising steps.")
    guidance: float = _field(7.5, "Classifier-free guidance scale (>= 0). At or below 1 guidance is off, as in diffusers: "
                                  "the UNet runs the prompt's half alone and the image is its prediction.")
    scheduler: str | None = _field(None, f"{', '.join(SCHEDULER_NAMES)} (or a diffusers class name); "
                                         "default: the base model's scheduler.")
    seed: int = _field(0, "Seed of the initial noise (numpy PCG64); on StyleShot engines also of the style patches' "
                          "shuffle (torch.Generator().manual_seed(seed) randperm, reproduced without torch).")
    height: int | None = _field(None, "Image height in pixels (a multiple of 8). Default: the engines' model family's "
                                      f"({_FAMILY_SIZES}).")
    width: int | None = _field(None, "Image width in pixels (a multiple of 8). Default: the engines' model family's "
                                     f"({_FAMILY_SIZES}).")
    num_images: int = _field(1, "Images per request (with guidance the UNet runs twice as many rows). More than the engines' "
                                "--max-batch run as several batches, each on its slice of the request's noise.")
    init_latents: Path | None = _field(None, "Initial noise .npy [N, 4, H/8, W/8] before the scheduler's init sigma "
                                             "(diffusers' `latents`); overrides --seed.")
    regions: tuple[Region, ...] = _field((), "Regional multi-style: STYLE_IMAGE MASK_IMAGE CONTENT_TEXT (repeatable, "
                                             "one per region; white mask pixels get that style; '' = no content). "
                                             "Replaces --style/--content.", flag="--region")
    region_scales: tuple[float, ...] | None = _field(None, "Comma-separated adapter scale per --region (a factor on "
                                                           "--scale / --target-block / --layer-scales).")
    # DeepCache step caching (engines exported with maskst-export --deepcache); see maskst.deepcache
    deepcache_interval: int = _field(1, "DeepCache step caching: run the whole UNet every N-th step (steps 0, N, 2N, ...) and "
                                        "only its shallow layers, reusing the deep feature of the last full step, on the "
                                        "others. 1 = off (exact). Needs engines exported with maskst-export --deepcache; "
                                        "not with --control-image. Faster, and the image deviates from full computation "
                                        "(maskst-bench reports by how much).")
    # image-driven style transfer (ControlNet engines: maskst-export --controlnet); see maskst.control
    control_image: tuple[Path, ...] = _field((), "Content image for the ControlNet (image-driven style transfer; engines "
                                                 "exported with --controlnet). Sets the output size unless --height/--width "
                                                 "are given. Repeat for several ControlNets, in export order.",
                                             flag="--control-image")
    control_preprocess: tuple[ControlPreprocess, ...] = _field(
        (), "How the control image becomes the ControlNet's input: none (use it as is), canny (cv2.Canny 100/200), "
            "lineart (informative-drawings sk_model, needs maskst-export --lineart-model) or lineart-inverted. One "
            "value for all control images or one each.  [default: none]")
    control_scale: tuple[float, ...] = _field((), "ControlNet conditioning scale: one value for all control images or "
                                                  "comma-separated, one each.  [default: 1.0]")

    @classmethod
    def create(cls, **values) -> "GenerationConfig":
        """Build from loosely typed values (CLI flags, JSON job lines) and validate."""
        values = _checked_types(cls, dict(values))
        if "method" in values:
            values["method"] = parse_enum(Method, values["method"], "method")
        if "mask_mode" in values:
            values["mask_mode"] = parse_enum(MaskMode, values["mask_mode"], "mask mode")
        if values.get("scheduler") is not None:  # "" is a mistake (an empty flag or JSON value), not the default
            values["scheduler"] = canonical_scheduler_name(values["scheduler"])
        for key in ("style", "target_blocks"):  # one value or a list of them
            if isinstance(values.get(key), (str, Path)):
                values[key] = (values[key],)
            if key in values and not isinstance(values[key], (list, tuple)):
                raise InputError(f"{key}={values[key]!r} must be a list (or one value), e.g. "
                                 + ('["wave.png"]' if key == "style" else '["up_blocks.1"]'))
        if "style" in values:
            values["style"] = tuple(_path(p, "style") for p in values["style"])
        if "target_blocks" in values:
            if not all(isinstance(b, str) for b in values["target_blocks"]):
                raise InputError(f"target_blocks={values['target_blocks']!r} must be block names, e.g. [\"up_blocks.1\"]")
            values["target_blocks"] = tuple(values["target_blocks"])
        if values.get("layer_scales") is not None:
            values["layer_scales"] = _numbers(values["layer_scales"], "layer_scales", "1,1,0.5,0")
        if values.get("init_latents"):
            values["init_latents"] = _path(values["init_latents"], "init_latents")
        if values.get("regions") is not None:
            regions = values["regions"]
            if isinstance(regions, (str, dict)) or not isinstance(regions, (list, tuple)):
                raise InputError(f"regions={regions!r} must be a list of regions, e.g. "
                                 '[{"style": "wave.png", "mask": "left.png", "content": "a wave"}]')
            values["regions"] = tuple(Region.parse(r, i) for i, r in enumerate(regions))
        if values.get("region_scales") is not None:
            values["region_scales"] = _numbers(values["region_scales"], "region_scales", "1.0,0.6 (one per region)")
        _control_values(values)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown option(s) {sorted(unknown)}; known: {sorted(f.name for f in dataclasses.fields(cls))}")
        config = cls(**values)
        config.validate()
        return config

    def control_preprocess_of(self, index: int) -> ControlPreprocess:
        """The preprocessing of control image ``index`` (one value broadcasts; none by default)."""
        values = self.control_preprocess or (ControlPreprocess.NONE,)
        return values[index if len(values) > 1 else 0]

    def control_scale_of(self, index: int) -> float:
        """The conditioning scale of control image ``index`` (one value broadcasts; 1.0 by default)."""
        values = self.control_scale or (1.0,)
        return float(values[index if len(values) > 1 else 0])

    def validate(self, vae_scale_factor: int = 8) -> None:
        """Raise InputError naming the field, the value and the fix, for the first bad value."""
        for name, what in (("prompt", "prompt"), ("negative_prompt", "negative prompt"), ("content", "content text")):
            check_text(getattr(self, name), what)  # str, and UTF-8 (a shell passes other bytes as surrogates)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is None:  # open: the model family's default (see sized)
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % vae_scale_factor:
                raise InputError(
                    f"{name}={value} must be a positive multiple of {vae_scale_factor} "
                    f"(e.g. {max(vae_scale_factor, round(value / vae_scale_factor) * vae_scale_factor) if isinstance(value, int) else 512})"
                )
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise InputError(f"steps={self.steps} must be an integer in [1, 1000]")
        if not isinstance(self.num_images, int) or self.num_images < 1:
            raise InputError(f"num_images={self.num_images} must be a positive integer")
        if not is_seed(self.seed):
            raise InputError(f"seed={self.seed} must be an integer in [0, 2**63)")
        if not 0.0 <= self.theta <= 1.0:
            raise InputError(f"theta={self.theta} must lie in [0, 1]")
        for name in ("scale", "content_scale", "guidance"):
            value = getattr(self, name)
            if not _finite32(value):
                raise InputError(f"{name}={value} must be a finite number within float32's range (|x| < 3.4e38)")
        if self.layer_scales is not None and not all(_finite32(v) for v in self.layer_scales):
            raise InputError(f"layer_scales={list(self.layer_scales)} must be finite numbers, one per cross-attention layer")
        if self.guidance < 0.0:
            raise InputError(f"guidance={self.guidance} must be >= 0 (at or below 1 guidance is off, as in diffusers; "
                             "7.5 is the usual value)")
        if (not isinstance(self.deepcache_interval, int) or isinstance(self.deepcache_interval, bool)
                or not 1 <= self.deepcache_interval <= MAX_INTERVAL):
            raise InputError(f"--deepcache-interval {self.deepcache_interval!r} must be an integer in [1, {MAX_INTERVAL}] "
                             "(1: off; 3: the whole UNet every third step)")
        self._validate_regions()
        self._validate_control()
        if self.deepcache_interval > 1 and self.control_image:
            raise InputError(f"--deepcache-interval {self.deepcache_interval} with --control-image: ControlNet residuals "
                             "enter the UNet blocks DeepCache's cached steps skip; use --deepcache-interval 1 (off) for "
                             "image-driven requests")

    def _validate_regions(self) -> None:
        if not self.regions:
            if self.region_scales is not None:
                raise InputError("--region-scales needs --region (one scale per region)")
            return
        if self.style:
            raise InputError("--style and --region exclude each other: give each region's style image in "
                             "--region STYLE_IMAGE MASK_IMAGE CONTENT_TEXT")
        if self.content:
            raise InputError("--content and --region exclude each other: give each region's content text as the "
                             "third value of --region (or '' for none)")
        for index, region in enumerate(self.regions):
            if not isinstance(region, Region):
                raise InputError(f"region {index + 1}: {region!r} is not a Region")
            check_text(region.content, f"content text of region {index + 1}")
            if region.scale is not None and not _finite32(region.scale):
                raise InputError(f"region {index + 1}: scale={region.scale} must be a finite number")
        if self.region_scales is not None:
            if len(self.region_scales) != len(self.regions):
                raise InputError(f"--region-scales has {len(self.region_scales)} value(s) for {len(self.regions)} "
                                 f"region(s); give one per --region, e.g. {','.join(['1.0'] * len(self.regions))}")
            if any(r.scale is not None for r in self.regions):
                raise InputError("region scales given twice (region_scales and a region's own 'scale'); give one")
            if not all(_finite32(v) for v in self.region_scales):
                raise InputError(f"region_scales={list(self.region_scales)} must be finite numbers")

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance applies (:func:`guidance_applies`)."""
        return guidance_applies(self.guidance)

    @property
    def regional(self) -> bool:
        """True for a regional request (``--region``)."""
        return bool(self.regions)

    def region_scale_values(self) -> tuple[float, ...]:
        """Each region's scale factor (``region_scales``, else the region's own ``scale``, else 1)."""
        if self.region_scales is not None:
            return tuple(self.region_scales)
        return tuple(1.0 if r.scale is None else float(r.scale) for r in self.regions)

    def sized(self, default_size: int) -> "GenerationConfig":
        """This request with an open (None) height / width set to ``default_size`` (the family's)."""
        if self.height is not None and self.width is not None:
            return self
        return dataclasses.replace(self, height=default_size if self.height is None else self.height,
                                   width=default_size if self.width is None else self.width)

    def _validate_control(self) -> None:
        count = len(self.control_image)
        for name in ("control_preprocess", "control_scale"):
            values = getattr(self, name)
            if values and not count:
                raise InputError(f"{name}={[getattr(v, 'value', v) for v in values]} without a control image: "
                                 "pass --control-image IMAGE (or leave the option out)")
            if len(values) > 1 and len(values) != count:
                raise InputError(f"{name} has {len(values)} values for {count} control image(s): give one value "
                                 "for all or one per control image")
        for value in self.control_scale:
            if not np.isfinite(value) or value < 0:
                raise InputError(f"control_scale={value} must be a finite number >= 0 (1.0: the ControlNet as trained)")

    @property
    def batch(self) -> int:
        """UNet batch: negative and positive halves."""
        return 2 * self.num_images


SEED_LIMIT = 2**63  # seeds are int64-sized: numpy's PCG64 and torch's manual_seed (StyleShot's shuffle) take them


def guidance_applies(guidance: float) -> bool:
    """Whether classifier-free guidance applies at this scale: diffusers' rule, ``guidance_scale > 1``. Without it the
    image is the prompt's (positive half's) prediction alone."""
    return guidance > 1.0


def request_default(name: str):
    """The default of one request field (:class:`GenerationConfig`): tools whose own options follow a request
    field (``maskst-bench --guidance``) read it here, so it is written once."""
    return GenerationConfig.__dataclass_fields__[name].default


def is_seed(value) -> bool:
    """The one seed rule (requests, sweep --seeds, fixtures): an integer (not a bool) in [0, 2**63)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SEED_LIMIT


def _finite32(value: float) -> bool:
    """Finite once cast to float32, the precision every graph reads scales in (1e308 is finite in Python only)."""
    return bool(np.isfinite(value)) and abs(float(value)) <= float(np.finfo(np.float32).max)


def _path(value, what: str) -> Path:
    """A file path from a CLI string or a JSON string (a JSON number or null is refused, naming ``what``)."""
    if isinstance(value, Path) or (isinstance(value, str) and value):
        return Path(value)
    raise InputError(f"{what}={value!r} must be a file path (a non-empty string)")


def _numbers(value, what: str, example: str) -> tuple[float, ...]:
    """Comma-separated numbers (a CLI string) or a list of JSON numbers, as floats."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, (int, float)) and not isinstance(items, bool):
        items = (items,)
    try:
        if isinstance(items, (str, bytes)) or any(isinstance(v, bool) for v in items):
            raise TypeError
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise InputError(f"{what}={value!r} must be numbers, e.g. {example}") from None


def _checked_types(cls, values: dict) -> dict:
    """Refuse values of the wrong JSON type for the scalar fields, naming the field, the value and its type.

    The types come from the dataclass's annotations: ``int`` fields take integers (not booleans, not strings),
    ``float`` fields numbers, ``str`` fields strings; ``None`` only where the annotation allows it (a batch
    job's ``null`` elsewhere would mean "default", which is spelt by leaving the key out)."""
    import typing

    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is None:
            continue  # unknown names are reported with the full list later
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if optional else hint
        if value is None:
            if optional or name in CONTROL_FIELDS:
                continue
            field = next(f for f in dataclasses.fields(cls) if f.name == name)
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise InputError(f"{name}=null: {name} is required (a string)")
            raise InputError(f"{name}=null: leave {name} out for its default, or give a value")
        if base is int:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            kind = "an integer"
        elif base is float:
            ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            kind = "a number"
        elif base is str:
            ok = isinstance(value, str)
            kind = "a string"
        else:
            continue  # lists, paths, enums and regions are parsed (and checked) field by field in create
        if not ok:
            field = next(f for f in dataclasses.fields(cls) if f.name == name)
            flag = field.metadata.get("flag") or "--" + name.replace("_", "-")
            raise InputError(f"{name}={value!r} ({type(value).__name__}) must be {kind} (option {flag})")
    return values


def _control_values(values: dict) -> None:
    """Normalise the control fields of loosely typed values in place (CLI strings, JSON scalars or lists),
    and size the output after the first control image when height / width are not given (as diffusers)."""
    from maskst.control import default_size, load_control_image

    for key in CONTROL_FIELDS:  # a JSON job's null: the option not given
        if key in values and values[key] is None:
            del values[key]
    image = values.get("control_image")
    if isinstance(image, (str, Path)):
        image = (image,)
    if image is not None:
        if not isinstance(image, (list, tuple)):
            raise InputError(f"control_image={image!r} must be a file path or a list of them")
        values["control_image"] = tuple(_path(p, "control_image") for p in image)
    preprocess = values.get("control_preprocess")
    if preprocess is not None:
        preprocess = (preprocess,) if isinstance(preprocess, (str, ControlPreprocess)) else preprocess
        values["control_preprocess"] = tuple(parse_enum(ControlPreprocess, v, "control preprocess") for v in preprocess)
    scale = values.get("control_scale")
    if scale is not None:
        scale = (scale,) if isinstance(scale, (int, float)) else scale
        try:
            values["control_scale"] = tuple(float(v) for v in scale)
        except (TypeError, ValueError):
            raise InputError(f"control_scale={scale!r} must be a number or a list of numbers") from None
    if values.get("control_image") and ("height" not in values or "width" not in values):
        first = values["control_image"][0]
        height, width = default_size(load_control_image(first), first)
        values.setdefault("height", height)
        values.setdefault("width", width)


def initial_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise for a seed (numpy PCG64), shared by maskst and the reference.

    This is diffusers' ``latents`` argument: the noise *before* the scheduler's init sigma.
    Torch's generator is not reproduced; to start from torch noise, pass it as init latents.
    """
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def starting_noise(config: GenerationConfig, shape: tuple[int, ...]) -> np.ndarray:
    """The request's initial noise [N, C, h, w] float32: its ``init_latents`` file, else its seed's noise. One rule for
    maskst and the references, so that a request alone reproduces both."""
    return load_init_latents(config.init_latents, shape) if config.init_latents else initial_noise(config.seed, shape)


def load_init_latents(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Read ``--init-latents FILE.npy`` and check it against the expected [N, C, h, w] shape."""
    try:
        latents = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"init latents {path} could not be read as a .npy array ({exc})") from None
    if latents.shape != tuple(shape):
        raise InputError(
            f"init latents {path} have shape {list(latents.shape)}; this request needs {list(shape)} "
            "([num_images, latent channels, height/8, width/8])"
        )
    if not np.all(np.isfinite(latents)):
        raise InputError(f"init latents {path} contain NaN or infinity")
    return latents.astype(np.float32)


def layer_scales(layer_names: list[str] | tuple[str, ...], config: GenerationConfig) -> np.ndarray:
    """Per-cross-attention-layer adapter scale, float32 [L], in ``unet.attn_processors`` order."""
    n = len(layer_names)
    if config.layer_scales is not None:
        if len(config.layer_scales) != n:
            raise InputError(
                f"layer_scales has {len(config.layer_scales)} values but the UNet has {n} cross-attention layers"
            )
        return np.asarray(config.layer_scales, dtype=np.float32)
    if not config.target_blocks:
        return np.full(n, config.scale, dtype=np.float32)
    selected = np.zeros(n, dtype=np.float32)
    for prefix in config.target_blocks:
        hits = [i for i, name in enumerate(layer_names) if name == prefix or name.startswith(prefix.rstrip(".") + ".")]
        if not hits:
            blocks = sorted({".".join(name.split(".")[:4]) for name in layer_names})
            raise InputError(
                f"target block {prefix!r} matches no cross-attention layer; this UNet has: {', '.join(blocks)}"
            )
        selected[hits] = config.scale
    return selected


def region_layer_scales(layer_names: list[str] | tuple[str, ...], config: GenerationConfig) -> np.ndarray:
    """Per-layer, per-region adapter scales, float32 [L, R]: ``layer_scales[l] * region_scale[r]``.

    Without regions R = 1 and the column is :func:`layer_scales` itself (times 1.0: bit-identical).
    """
    layers = layer_scales(layer_names, config)
    regions = np.asarray(config.region_scale_values() if config.regions else (1.0,), dtype=np.float32)
    return (layers[:, None] * regions[None, :]).astype(np.float32)


class EmptyContentWarning(UserWarning):
    """Method maskst / instantstyle with an empty content text: run as plain ip-adapter."""


def effective_method(config: GenerationConfig, plain: Method = Method.IP_ADAPTER) -> Method:
    """Documented policy: with no content text there is nothing to mask or subtract: the request runs as
    ``plain``, the method of the engines' family that leaves the embedding unchanged (``ip-adapter``;
    StyleShot engines: ``styleshot``).

    Regional requests: the request's method if any region has a content text (each region's own
    method: :func:`region_methods`), else ``ip-adapter``."""
    if config.regions:
        if config.method is not Method.IP_ADAPTER and not any(r.content.strip() for r in config.regions):
            return Method.IP_ADAPTER
        return config.method
    if not config.method.is_plain and not config.content.strip():
        warnings.warn(
            f"method {config.method.value!r} with an empty content text masks nothing: running as {plain.value!r}",
            EmptyContentWarning,
            stacklevel=3,
        )
        return plain
    return config.method


def region_methods(config: GenerationConfig) -> tuple[Method, ...]:
    """The method each region runs: a region with an empty content text runs as ``ip-adapter``
    (with an :class:`EmptyContentWarning` naming it), as :func:`effective_method` does for one style."""
    methods = []
    for index, region in enumerate(config.regions):
        if config.method is not Method.IP_ADAPTER and not region.content.strip():
            warnings.warn(f"method {config.method.value!r}: region {index + 1} has an empty content text and masks "
                          "nothing: it runs as 'ip-adapter'", EmptyContentWarning, stacklevel=3)
            methods.append(Method.IP_ADAPTER)
        else:
            methods.append(config.method)
    return tuple(methods)


def plus_method_error(method: Method) -> str:
    return (f"method {method.value!r} needs the 1024-d CLIP image embedding, which IP-Adapter Plus (Resampler) "
            "adapters do not consume; use --method ip-adapter with a Plus adapter, or export ip-adapter_sd15 for "
            "maskst / instantstyle")
