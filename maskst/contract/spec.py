"""One IO spec per exported graph; everything else is derived from it.

A :class:`GraphSpec` names each input and output, its dtype and its shape, where a shape entry is
either a fixed size or the name of a symbolic dimension with a :class:`DimRange` (min/opt/max).
From that one fact the code derives the ONNX ``dynamic_axes``, concrete shapes for given dimension
values, TensorRT optimisation profiles (min/opt/max per input), preallocated buffer shapes and
random sample inputs for parity checks. Specs serialise into the engines manifest so the runtime
can check shapes without torch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from maskst.errors import InputError


@dataclasses.dataclass(frozen=True)
class DimRange:
    """Range of one symbolic dimension: ``min <= opt <= max``."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(f"dimension range min={self.min} opt={self.opt} max={self.max} must satisfy 1 <= min <= opt <= max")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``shape`` entries: int (fixed) or str (symbolic dim name).

    ``low``/``high`` bound the random sample values of an input (exclusive high for integers).
    """

    name: str
    dtype: str  # numpy dtype name: float32, float16, int64, bool
    shape: tuple[int | str, ...]
    low: float = -1.0
    high: float = 1.0

    def concrete(self, dims: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.shape)


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """The IO contract of one exported network."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: dict[str, DimRange]
    derived: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)  # dim -> (base dim, factor)
    # dim -> (base dim, divisor): ceil(base / divisor), the size after k stride-2 convolutions (padding 1) as
    # in a UNet's down path, e.g. a UNet level's grid or a ControlNet residual at latent stride 4: ceil(h / 4)
    divided: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    # derived dims that may also equal their base: the UNet's batch B is 2 N with classifier-free guidance (negative
    # half, then positive) and N without (diffusers' rule at guidance <= 1: the positive half alone). Their range
    # runs from the base's min to factor x its max; a value is checked against the base only where both are given.
    optional_factors: tuple[str, ...] = ()
    atol: float = 1e-4  # parity tolerances against the PyTorch module, per output
    rtol: float = 1e-3

    # ---- derived facts

    def resolve(self, dims: dict[str, int]) -> dict[str, int]:
        """Fill derived dimensions (e.g. B = 2 N, H = 8 h) from the free ones; a free dimension given
        neither directly nor through a derived one takes its range's ``opt`` (e.g. the regions axis R
        for callers that do not use regions). An optional factor's dimension (:attr:`optional_factors`) given
        with its base must be the base or factor x the base (``{"N": 3, "B": 3}``: three images without guidance);
        given alone, the base is the guided reading where it divides (B = 4: N = 2), else the dimension itself
        (B = 3: N = 3), either of which resolves again to the same values."""
        out = dict(dims)
        for name, (base, factor) in self.derived.items():
            if name in self.optional_factors and name in out:
                if base in out and out[name] not in (out[base], out[base] * factor):
                    raise InputError(f"{self.name}: dimension {name}={out[name]} must be {base}={out[base]} or "
                                     f"{factor} x {base} = {out[base] * factor}")
                # given alone (a feed's B): either reading is valid; take the guided one where it divides
                out.setdefault(base, out[name] // factor if out[name] % factor == 0 else out[name])
                continue
            if base not in out and name in out:
                if out[name] % factor:
                    raise InputError(f"{self.name}: dimension {name}={out[name]} must be a multiple of {factor}")
                out[base] = out[name] // factor
        for name, r in self.dims.items():
            out.setdefault(name, r.opt)
        for name, (base, factor) in self.derived.items():
            out.setdefault(name, out[base] * factor)
        for name, (base, divisor) in self.divided.items():
            if base in out:
                want = -(-out[base] // divisor)
                if out.setdefault(name, want) != want:
                    raise InputError(f"{self.name}: dimension {name}={out[name]} must be ceil({base}/{divisor}) = {want} "
                                     f"for {base}={out[base]}")
        return out

    def dim_range(self, name: str) -> DimRange:
        if name in self.dims:
            return self.dims[name]
        if name in self.divided:
            base, divisor = self.divided[name]
            r = self.dim_range(base)
            return DimRange(*(-(-v // divisor) for v in (r.min, r.opt, r.max)))
        base, factor = self.derived[name]
        r = self.dims[base]
        return DimRange(r.min * (1 if name in self.optional_factors else factor), r.opt * factor, r.max * factor)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export ``dynamic_axes`` for every tensor with a symbolic dimension."""
        axes = {}
        for t in self.inputs + self.outputs:
            named = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if named:
                axes[t.name] = named
        return axes

    def shapes(self, dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
        dims = self.resolve(dims)
        return {t.name: t.concrete(dims) for t in self.inputs + self.outputs}

    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimisation profile: (min, opt, max) shape of every input."""
        out = {}
        for t in self.inputs:
            ranges = [(d, d, d) if isinstance(d, int) else dataclasses.astuple(self.dim_range(d)) for d in t.shape]
            out[t.name] = tuple(tuple(r[i] for r in ranges) for i in range(3))
        return out

    def max_shapes(self) -> dict[str, tuple[int, ...]]:
        """Largest shape of every tensor: what preallocated buffers are sized for."""
        return self.shapes({name: r.max for name, r in self.dims.items()})

    def sample_inputs(self, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the given dimensions, within each input's value range."""
        rng = np.random.default_rng(seed)
        shapes = self.shapes(dims)
        feed = {}
        for t in self.inputs:
            shape = shapes[t.name]
            if t.dtype.startswith("int"):
                feed[t.name] = rng.integers(int(t.low), int(t.high), size=shape).astype(t.dtype)
            else:
                feed[t.name] = rng.uniform(t.low, t.high, size=shape).astype(t.dtype)
        return feed

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        """Raise InputError for a missing input, wrong dtype or rank, or a dim outside its range."""
        seen: dict[str, int] = {}
        for t in self.inputs:
            if t.name not in feed:
                raise InputError(f"{self.name}: input {t.name!r} is missing")
            arr = feed[t.name]
            if str(arr.dtype) != t.dtype:
                raise InputError(f"{self.name}: input {t.name!r} has dtype {arr.dtype}; expected {t.dtype}")
            if len(arr.shape) != len(t.shape):
                raise InputError(f"{self.name}: input {t.name!r} has shape {list(arr.shape)}; expected {list(t.shape)}")
            for axis, (want, got) in enumerate(zip(t.shape, arr.shape)):
                if isinstance(want, int):
                    if got != want:
                        raise InputError(f"{self.name}: input {t.name!r} axis {axis} is {got}; the engine needs {want}")
                    continue
                r = self.dim_range(want)
                if not r.min <= got <= r.max:
                    raise InputError(
                        f"{self.name}: input {t.name!r} dimension {want}={got} is outside the engine profile "
                        f"[{r.min}, {r.max}]; rebuild the engines with a wider range (maskst-export options) or change the request"
                    )
                if seen.setdefault(want, got) != got:
                    raise InputError(f"{self.name}: dimension {want} is {seen[want]} in one input and {got} in {t.name!r}")
        self.resolve(seen)  # derived dimensions must divide evenly (B = 2 N), divided ones match (h/2 = ceil(h / 2))

    def dims_of(self, feed: dict[str, np.ndarray]) -> dict[str, int]:
        """Values of the symbolic dimensions in a feed (plus the derived ones)."""
        dims = {}
        for t in self.inputs:
            for want, got in zip(t.shape, feed[t.name].shape):
                if isinstance(want, str):
                    dims[want] = int(got)
        return self.resolve(dims)

    def check_dims(self, dims: dict[str, int], what: dict[str, str] | None = None,
                   scale: dict[str, tuple[int, str]] | None = None) -> None:
        """InputError if a dimension value lies outside the profile; ``what`` names dims for users, ``scale``
        ({dim: (factor, unit)}) shows a dim's value and range in the user's units (latent h x 8 -> "px")."""
        for name, value in dims.items():
            if name not in self.dims and name not in self.derived and name not in self.divided:
                continue
            r = self.dim_range(name)
            if not r.min <= value <= r.max:
                label = (what or {}).get(name, f"dimension {name}")
                if scale and name in scale:
                    factor, unit = scale[name]
                    raise InputError(
                        f"{label} {value * factor} {unit} is outside the engines' range [{r.min * factor}, "
                        f"{r.max * factor}] {unit} ({self.name}); rebuild with maskst-export --min-size/--max-size "
                        "or change the request"
                    )
                raise InputError(
                    f"{label}={value} is outside the range the engines were built for [{r.min}, {r.max}] ({self.name}); "
                    "rebuild with maskst-export --min-size/--max-size/--max-batch or change the request"
                )

    # ---- manifest round trip

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "GraphSpec":
        return cls(
            name=data["name"],
            inputs=tuple(TensorSpec(**{**t, "shape": tuple(t["shape"])}) for t in data["inputs"]),
            outputs=tuple(TensorSpec(**{**t, "shape": tuple(t["shape"])}) for t in data["outputs"]),
            dims={k: DimRange(**v) for k, v in data["dims"].items()},
            derived={k: tuple(v) for k, v in data.get("derived", {}).items()},
            divided={k: tuple(v) for k, v in data.get("divided", {}).items()},
            optional_factors=tuple(data.get("optional_factors", ())),  # engines written before: B = 2 N only
            atol=data["atol"],
            rtol=data["rtol"],
        )
