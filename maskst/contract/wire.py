"""Wire formats: names and integer codes that leave the process (graph inputs, manifests, PNG metadata,
batch jobs). Each is written here once, explicitly, never derived from declaration order.

* :class:`Method` and :class:`MaskMode` reach the exported ``image_conditioner`` graph as int64
  inputs; the graph compares them with the codes below, so the codes an engines folder was built
  with are recorded in its manifest (:func:`conditioner_wire_format`) and checked on load
  (:func:`wire_format_differences`): reordering or renaming a member can never silently change
  what an existing engine computes.
* Scheduler names: the keys users write (``--scheduler``, job lines, metadata) and the diffusers
  class each one reproduces.
"""

from __future__ import annotations

import enum
from typing import Any

from maskst.errors import InputError


class Method(str, enum.Enum):
    """How the image embedding is conditioned before the IP-Adapter projection."""

    IP_ADAPTER = "ip-adapter"  # e_hat = e_i
    INSTANTSTYLE = "instantstyle"  # e_hat = e_i - s * e_c
    MASKST = "maskst"  # e_hat = e_i * (1 - M)
    STYLESHOT = "styleshot"  # StyleShot engines' unmasked baseline: e_hat_k = e_k (the conditioner's plain code)

    @property
    def index(self) -> int:
        """int64 code fed to the exported conditioner graph (:data:`METHOD_CODES`; a name of
        :data:`METHOD_CODE_ALIASES` feeds the code of the method it names)."""
        return METHOD_CODES[METHOD_CODE_ALIASES.get(self.value, self.value)]

    @property
    def is_plain(self) -> bool:
        """True for the methods that pass the image embedding on unchanged (ip-adapter, styleshot)."""
        return self.index == METHOD_CODES["ip-adapter"]


class MaskMode(str, enum.Enum):
    """How MaskST selects the content elements."""

    KMEANS = "kmeans"  # exact 1-D 2-means; M = the cluster with the larger centre
    QUANTILE = "quantile"  # M = p > quantile(p, theta)

    @property
    def index(self) -> int:
        """int64 code fed to the exported conditioner graph (:data:`MASK_MODE_CODES`)."""
        return MASK_MODE_CODES[self.value]


# The conditioner graph's codes. Append new members with new codes; never renumber.
METHOD_CODES: dict[str, int] = {"ip-adapter": 0, "instantstyle": 1, "maskst": 2}
MASK_MODE_CODES: dict[str, int] = {"kmeans": 0, "quantile": 1}
# User-facing method names that compute what another method's code computes (not recorded in manifests:
# the graph only ever sees the codes above). StyleShot's baseline is the plain, unconditioned embedding.
METHOD_CODE_ALIASES: dict[str, str] = {"styleshot": "ip-adapter"}
# The methods with a code of their own: what a conditioner graph distinguishes (parity feeds, specs).
CONDITIONER_METHODS: tuple[Method, ...] = tuple(m for m in Method if m.value in METHOD_CODES)


def parse_enum(enum_cls, value, name: str):
    """Return ``enum_cls(value)`` or an InputError naming the option, the value and the choices."""
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in enum_cls)
        raise InputError(f"{name}={value!r} is not supported; choose one of: {choices}") from None


def conditioner_wire_format() -> dict[str, dict[str, int]]:
    """What the manifest records: {"method": {name: code}, "mask_mode": {name: code}}."""
    return {"method": dict(METHOD_CODES), "mask_mode": dict(MASK_MODE_CODES)}


def wire_format_differences(recorded: dict | None) -> list[str]:
    """Each way an engines folder's recorded codes differ from this maskst's (empty: none)."""
    if recorded is None:
        return ["the manifest records no conditioner wire format"]
    current = conditioner_wire_format()
    problems = []
    for field, codes in current.items():
        theirs = recorded.get(field, {})
        for name in sorted(set(codes) | set(theirs)):
            if codes.get(name) != theirs.get(name):
                problems.append(f"{field} {name!r}: engines use code {theirs.get(name)}, this maskst {codes.get(name)}")
    return problems


# ---------------------------------------------------------------- scheduler names

SCHEDULER_CLASSES: dict[str, str] = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULER_CLASSES)
_SCHEDULER_ALIASES: dict[str, str] = {
    "dpmsolver++": "dpm++2m", "dpm-solver++": "dpm++2m", "dpmpp2m": "dpm++2m", "dpmpp_2m": "dpm++2m",
    "dpm++": "dpm++2m", "uni_pc": "unipc", "uni-pc": "unipc", "euler_discrete": "euler", "plms": "pndm",
}


def check_scheduler_name(name: Any) -> None:
    if not isinstance(name, str) or name not in SCHEDULER_CLASSES:
        raise InputError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULER_NAMES)}")


def canonical_scheduler_name(name: str) -> str:
    """A key of :data:`SCHEDULER_NAMES` for a name users write: the key itself (any case), a diffusers
    class name (``"UniPCMultistepScheduler"``) or a common alias (``"dpmsolver++"``); InputError otherwise."""
    key = str(name).strip().lower()
    for canonical, class_name in SCHEDULER_CLASSES.items():
        if key == class_name.lower():
            return canonical
    key = _SCHEDULER_ALIASES.get(key, key)
    check_scheduler_name(key)
    return key


def diffusers_class_name(name: str) -> str:
    """The diffusers class a scheduler key reproduces, e.g. ``"ddim"`` -> ``"DDIMScheduler"``."""
    check_scheduler_name(name)
    return SCHEDULER_CLASSES[name]


def scheduler_name_from_config(config: dict) -> str:
    """Key in :data:`SCHEDULER_NAMES` for a diffusers scheduler config's ``_class_name``.

    Only the class is mapped; the runtime's ``make_scheduler`` checks the options (e.g. a
    DPMSolverMultistepScheduler config with solver_order=3 maps to "dpm++2m" and is then refused).
    Raises InputError if the class is missing or not one of the supported classes.
    """
    if not isinstance(config, dict):
        raise InputError(f"scheduler config must be a dict (scheduler_config.json), got {type(config).__name__}")
    cls = config.get("_class_name")
    for key, class_name in SCHEDULER_CLASSES.items():
        if cls == class_name:
            return key
    raise InputError(
        f"scheduler config _class_name={cls!r} is not supported; supported classes: "
        f"{', '.join(SCHEDULER_CLASSES.values())}; choose a scheduler explicitly: {', '.join(SCHEDULER_NAMES)}."
    )
