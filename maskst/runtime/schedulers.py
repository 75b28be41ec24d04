"""Pure-numpy diffusion schedulers for the runtime denoising loop (no torch at import or run time).

Each class reproduces one diffusers 0.42 scheduler step by step, so an ONNX / TensorRT pipeline gives
the same latents as the PyTorch reference pipeline:

========== ================================ ==========================================================
name       diffusers class                  what is reproduced
========== ================================ ==========================================================
pndm       PNDMScheduler                    PLMS with ``skip_prk_steps=True`` (SD 1.5's default)
ddim       DDIMScheduler                    deterministic DDIM (eta = 0), clip / dynamic thresholding
euler      EulerDiscreteScheduler           Euler with s_churn = 0 (the pipelines' default)
dpm++2m    DPMSolverMultistepScheduler      ``algorithm_type="dpmsolver++"``, ``solver_order=2``
unipc      UniPCMultistepScheduler          UniP + UniC, ``predict_x0=True``, bh1 / bh2, order 2
========== ================================ ==========================================================

Configs resolve like ``DiffusersClass.from_config(base_config)``: keys the class's ``__init__``
knows are taken from the base config, other keys are ignored, missing keys take that class's
``__init__`` defaults (``_DEFAULTS`` mirrors the installed diffusers signatures; a test checks it).
Every config option is either reproduced or refused with :class:`~maskst.errors.InputError`; no
option is silently treated differently from diffusers.

Precision: the tables diffusers computes once (betas, ``alphas_cumprod``, sigmas) are rebuilt in
float32 the way torch does on CPU (its linspace and double-accumulated cumprod), so they equal
diffusers' tables; the one known exception is torch's AVX-512 float32 sqrt, which on some CPUs is
1 ulp off the correctly rounded value numpy returns (6 of 1000 SD 1.5 sigmas). The per-step
arithmetic then runs in float64 and the result is cast back to the dtype of ``sample``. diffusers
runs the same formulas in float32, so the two agree to float32 rounding, not bit for bit: measured
<= 3e-6 of the data scale (the largest of init_noise_sigma and the latents) up to 100 steps. At
hundreds of steps UniPC drifts further (~5e-5) because diffusers' float32 coefficients lose digits
there (its h*phi_k recursion cancels at small step sizes); the float64 values here are the exact
ones.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from maskst.contract.wire import SCHEDULER_CLASSES, check_scheduler_name
from maskst.errors import InputError

__all__ = [
    "Scheduler",
    "PNDMScheduler",
    "DDIMScheduler",
    "EulerDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
    "make_scheduler",
]

# ``__init__`` defaults of each diffusers 0.42 class (scheduling_*.py). from_config semantics: only
# these keys are read from a base config; a key absent there takes the value below. E.g. DDIM's
# clip_sample defaults to True, so DDIM built from a config without clip_sample clips x0 to [-1, 1].
_BETA_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "pndm": {
        **_BETA_DEFAULTS,
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 0,
    },
    "ddim": {
        **_BETA_DEFAULTS,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "clip_sample_range": 1.0,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    },
    "euler": {
        **_BETA_DEFAULTS,
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    },
    "dpm++2m": {
        **_BETA_DEFAULTS,
        "solver_order": 2,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    },
    "unipc": {
        **_BETA_DEFAULTS,
        "solver_order": 2,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "predict_x0": True,
        "solver_type": "bh2",
        "lower_order_final": True,
        "disable_corrector": [],
        "solver_p": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "final_sigmas_type": "zero",
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
        "sigma_min": None,
        "sigma_max": None,
        "shift_terminal": None,
    },
}

_SPACINGS = ("leading", "trailing", "linspace")
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# --------------------------------------------------------------------------------------------------
# config helpers


def _resolve_config(name: str, config: dict) -> dict:
    """``from_config`` semantics: known keys from ``config``, defaults for the rest, others dropped.

    Keys listed in ``_use_default_values`` (diffusers writes it into ``scheduler.config``) were
    defaults of the class that wrote the config, so diffusers skips them and so do we.
    """
    if not isinstance(config, dict):
        raise InputError(f"scheduler config must be a dict (scheduler_config.json), got {type(config).__name__}")
    used_defaults = set(config.get("_use_default_values", None) or [])
    resolved = copy.deepcopy(_DEFAULTS[name])
    for key in resolved:
        if key in config and key not in used_defaults:
            resolved[key] = copy.deepcopy(config[key])
    return resolved


def _refuse(name: str, key: str, value: Any, supported: str) -> InputError:
    return InputError(
        f"scheduler {name!r} ({SCHEDULER_CLASSES[name]}): config {key}={value!r} is not supported by the "
        f"numpy runtime; supported: {supported}. Edit scheduler_config.json or choose another scheduler."
    )


def _check_choice(name: str, cfg: dict, key: str, allowed: tuple) -> None:
    if cfg[key] not in allowed:
        raise _refuse(name, key, cfg[key], " / ".join(repr(a) for a in allowed))


def _check_int(name: str, cfg: dict, key: str, minimum: int) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(
            f"scheduler {name!r}: config {key}={value!r} must be an integer >= {minimum}. Fix scheduler_config.json."
        )
    return int(value)


# --------------------------------------------------------------------------------------------------
# float32 tables, built the way torch builds them on CPU


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` on CPU, bit for bit.

    numpy's linspace (float64, then cast) differs from torch's float32 kernel in ~1/3 of the values
    by one ulp. torch computes ``step`` in float32, fills the first half as ``start + step * i`` and
    the second half as ``end - step * (steps - 1 - i)`` with a fused multiply-add; the float64
    products below are exact (24-bit step times an integer < 2^29), so one rounding to float32
    reproduces the FMA.
    """
    if steps == 1:
        return np.array([start], dtype=np.float32)
    s, e = np.float32(start), np.float32(end)
    step = np.float64((e - s) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    first = np.float64(s) + step * i
    second = np.float64(e) - step * (steps - 1 - i)
    return np.where(i < steps // 2, first, second).astype(np.float32)


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
    # torch.cumprod on a CPU float32 tensor accumulates in double (its acc_type), then rounds.
    return np.cumprod(x.astype(np.float64)).astype(np.float32)


def _betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Glide cosine schedule (``squaredcos_cap_v2``); python float math, then float32, as diffusers."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.asarray(betas, dtype=np.float64).astype(np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """diffusers' ``rescale_zero_terminal_snr`` (arXiv 2305.08891, Algorithm 1), in float32."""
    alphas = np.float32(1.0) - betas
    alphas_bar_sqrt = np.sqrt(_cumprod_f32(alphas))
    a0, at = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = alphas_bar_sqrt - at  # shift so the last timestep is zero
    alphas_bar_sqrt = alphas_bar_sqrt * (a0 / (a0 - at))  # scale so the first is unchanged
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (np.float32(1.0) - alphas).astype(np.float32)


def _make_betas(name: str, cfg: dict) -> np.ndarray:
    """float32 betas, shape (num_train_timesteps,), from beta_schedule or trained_betas."""
    n = _check_int(name, cfg, "num_train_timesteps", 2)
    if cfg["trained_betas"] is not None:
        betas = np.asarray(cfg["trained_betas"], dtype=np.float64).astype(np.float32)
        if betas.shape != (n,):
            # diffusers does not check this and then indexes out of range mid-run.
            raise InputError(
                f"scheduler {name!r}: config trained_betas has shape {betas.shape}, expected "
                f"({n},) to match num_train_timesteps={n}. Fix scheduler_config.json."
            )
    elif cfg["beta_schedule"] == "linear":
        betas = _torch_linspace_f32(cfg["beta_start"], cfg["beta_end"], n)
    elif cfg["beta_schedule"] == "scaled_linear":
        # Latent-diffusion schedule: linear in sqrt(beta), squared in float32 like torch.
        betas = _torch_linspace_f32(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n) ** 2
    elif cfg["beta_schedule"] == "squaredcos_cap_v2":
        betas = _betas_for_alpha_bar(n)
    else:
        raise _refuse(name, "beta_schedule", cfg["beta_schedule"], " / ".join(map(repr, _BETA_SCHEDULES)))
    if cfg.get("rescale_betas_zero_snr"):
        betas = _rescale_zero_terminal_snr(betas)
    return betas


def _threshold_sample(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding (Imagen): per sample, clamp to the ``ratio`` quantile of |x0| and rescale.

    ``x0``: (batch, channels, ...) float64. torch.quantile and numpy's default both interpolate
    linearly between order statistics.
    """
    b = x0.shape[0]
    flat = x0.reshape(b, -1)
    s = np.quantile(np.abs(flat), ratio, axis=1)
    s = np.clip(s, 1.0, max_value)[:, None]  # min 1: plain [-1, 1] clipping when values are small
    return (np.clip(flat, -s, s) / s).reshape(x0.shape)


def _as_float64(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"scheduler {what} must be a floating-point array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _scalar(timestep: Any) -> float | int:
    """A python number from an int / float / numpy scalar / 0-d array timestep."""
    arr = np.asarray(timestep)
    if arr.size != 1:
        raise InputError(f"timestep must be a scalar, got an array of shape {arr.shape}")
    return arr.reshape(()).item()


# --------------------------------------------------------------------------------------------------
# base class


class Scheduler:
    """Common interface of the numpy schedulers (mirrors the diffusers calls a pipeline makes).

    Typical loop (``latents``: float32 (batch, 4, H/8, W/8))::

        sched.set_timesteps(steps)
        latents = noise * sched.init_noise_sigma
        for t in sched.timesteps:
            x_in = sched.scale_model_input(latents, t)
            eps = unet(x_in, t)
            latents = sched.step(eps, t, latents)

    Attributes:
        name: key in :data:`SCHEDULER_NAMES`.
        config: resolved config actually used (base config keys the class knows, plus defaults).
        init_noise_sigma: std of the initial noise (1.0 except for Euler).
        timesteps: set by :meth:`set_timesteps`; int64 (float32 for Euler), shape (num_steps,),
            same values as diffusers' ``scheduler.timesteps``. Empty before set_timesteps.
        num_inference_steps: the value given to :meth:`set_timesteps`, None before.
    """

    name: str = ""
    _timestep_dtype: type = np.int64
    _needs_distinct_timesteps = False  # sigma-indexed schedulers locate the step by timestep value

    def __init__(self, config: dict):
        self.config: dict = _resolve_config(self.name, config)
        cfg = self.config
        self.num_train_timesteps = _check_int(self.name, cfg, "num_train_timesteps", 2)
        _check_int(self.name, cfg, "steps_offset", 0)
        _check_choice(self.name, cfg, "timestep_spacing", _SPACINGS)
        self._validate()
        self.betas = _make_betas(self.name, cfg)
        self.alphas_cumprod = _cumprod_f32(np.float32(1.0) - self.betas)
        self.timesteps: np.ndarray = np.zeros(0, dtype=self._timestep_dtype)
        self.num_inference_steps: int | None = None
        self._post_init()

    # subclasses -----------------------------------------------------------------------------------
    def _validate(self) -> None:
        """Refuse config options this implementation does not reproduce."""

    def _post_init(self) -> None:
        """Build per-class tables after alphas_cumprod."""

    def _set_timesteps(self, n: int) -> None:
        raise NotImplementedError

    def _step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # public ---------------------------------------------------------------------------------------
    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial latent noise (python float)."""
        return 1.0

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Compute ``timesteps`` for ``num_inference_steps`` steps and reset all multistep state.

        Raises InputError if ``num_inference_steps`` is not an integer in [1, num_train_timesteps]
        (diffusers only checks the upper bound for DDIM; above it the other schedules degenerate),
        or if it makes Euler / DPM / UniPC timesteps repeat (their steps then divide by zero).
        """
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= self.num_train_timesteps:
            raise InputError(
                f"num_inference_steps={n!r} is invalid for scheduler {self.name!r}: expected an integer "
                f"from 1 to num_train_timesteps={self.num_train_timesteps}."
            )
        self.num_inference_steps = int(n)
        self._set_timesteps(int(n))
        if self._needs_distinct_timesteps and len(np.unique(self.timesteps)) != len(self.timesteps):
            # e.g. "leading" DPM / UniPC with n >= num_train_timesteps: stride 0, equal sigmas, and
            # diffusers divides by a zero log-SNR step (NaN). Refuse instead of reproducing it.
            bad = self.num_inference_steps
            self.num_inference_steps = None
            raise InputError(
                f"num_inference_steps={bad} gives repeated timesteps with scheduler {self.name!r} and "
                f"timestep_spacing={self.config['timestep_spacing']!r}; use fewer steps"
            )

    def scale_model_input(self, sample: np.ndarray, timestep: Any) -> np.ndarray:
        """Scale the denoiser input for ``timestep``; identity except for Euler.

        Args:
            sample: (batch, channels, h, w) latents, any float dtype.
            timestep: an element of ``timesteps``.
        Returns:
            Array with the shape and dtype of ``sample`` (``sample`` itself when unchanged).
        """
        return sample

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray) -> np.ndarray:
        """One denoising step from ``timestep`` to the next one in ``timesteps``.

        Args:
            model_output: denoiser output for ``sample`` (epsilon, v or x0 as the config's
                prediction_type says), shape of ``sample``.
            timestep: the element of ``timesteps`` that was given to the model.
            sample: (batch, channels, h, w) current latents, float16 / float32 / float64.
        Returns:
            prev_sample with the shape and dtype of ``sample``.
        """
        if self.num_inference_steps is None:
            raise RuntimeError(f"scheduler {self.name!r}: call set_timesteps() before step()")
        sample_arr = np.asarray(sample)
        out_dtype = sample_arr.dtype
        x = _as_float64(sample_arr, "sample")
        m = _as_float64(model_output, "model_output")
        if m.shape != x.shape:
            raise InputError(f"model_output shape {m.shape} does not match sample shape {x.shape}")
        prev = self._step(m, timestep, x)
        return np.asarray(prev, dtype=np.float64).astype(out_dtype, copy=False)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} steps={self.num_inference_steps}>"


# --------------------------------------------------------------------------------------------------
# discrete-alpha schedulers (PNDM, DDIM): x_t indexed by integer timestep in alphas_cumprod


def _leading_int(n: int, num_train: int, offset: int) -> np.ndarray:
    # ascending; integer multiples of num_train // n, shifted by steps_offset
    step_ratio = num_train // n
    return (np.arange(0, n) * step_ratio).round().astype(np.int64) + offset


def _trailing_int(n: int, num_train: int) -> np.ndarray:
    # descending from num_train - 1 in (possibly fractional) strides, rounded
    step_ratio = num_train / n
    return np.round(np.arange(num_train, 0, -step_ratio)).astype(np.int64) - 1


def _check_alpha_index(sched: Scheduler, ts: np.ndarray) -> None:
    # PNDM / DDIM index alphas_cumprod by timestep; "leading" + steps_offset can overshoot it
    # (diffusers then fails with an IndexError mid-loop).
    if ts.max() >= sched.num_train_timesteps:
        cfg = sched.config
        raise InputError(
            f"scheduler {sched.name!r}: num_inference_steps={sched.num_inference_steps} with "
            f"timestep_spacing={cfg['timestep_spacing']!r} and steps_offset={cfg['steps_offset']} gives "
            f"timestep {int(ts.max())} >= num_train_timesteps={sched.num_train_timesteps}; use fewer steps"
        )


class PNDMScheduler(Scheduler):
    """diffusers ``PNDMScheduler`` with ``skip_prk_steps=True``: pseudo linear multistep (PLMS).

    The first two model calls form a 2nd-order start (the same timestep is used twice), then
    Adams-Bashforth of increasing order up to 4 on the stored model outputs.
    """

    name = "pndm"

    def _validate(self) -> None:
        cfg = self.config
        if not cfg["skip_prk_steps"]:
            raise _refuse(
                self.name, "skip_prk_steps", cfg["skip_prk_steps"],
                "True only (the Runge-Kutta warm-up is not implemented; SD 1.5 configs set it to True)",
            )
        _check_choice(self.name, cfg, "prediction_type", ("epsilon", "v_prediction"))

    def _post_init(self) -> None:
        self.final_alpha_cumprod = (
            np.float32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        )
        self._reset()

    def _reset(self) -> None:
        self._ets: list[np.ndarray] = []
        self._counter = 0
        self._cur_sample: np.ndarray | None = None

    def _set_timesteps(self, n: int) -> None:
        cfg, T = self.config, self.num_train_timesteps
        if cfg["timestep_spacing"] == "linspace":
            ts = np.linspace(0, T - 1, n).round().astype(np.int64)
        elif cfg["timestep_spacing"] == "leading":
            ts = _leading_int(n, T, cfg["steps_offset"])
        else:
            ts = _trailing_int(n, T)[::-1].copy()
        _check_alpha_index(self, ts)
        # PLMS order: descending, with the second timestep repeated (the 2-call warm-up uses it).
        plms = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy()
        self.timesteps = plms.astype(np.int64)
        self._reset()

    def _step(self, model_output, timestep, sample):
        # Mirrors PNDMScheduler.step_plms; note diffusers uses num_train // n as the stride for
        # prev_timestep whatever the timestep_spacing.
        t = int(_scalar(timestep))
        ratio = self.num_train_timesteps // self.num_inference_steps
        prev_t = t - ratio
        if self._counter != 1:
            self._ets = self._ets[-3:]
            self._ets.append(model_output)
        else:
            prev_t = t
            t = t + ratio
        ets = self._ets
        if len(ets) == 1 and self._counter == 0:
            eps = model_output
            self._cur_sample = sample
        elif len(ets) == 1 and self._counter == 1:
            eps = (model_output + ets[-1]) / 2
            sample = self._cur_sample
            self._cur_sample = None
        elif len(ets) == 2:
            eps = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            eps = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            eps = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        prev = self._prev_sample(sample, t, prev_t, eps)
        self._counter += 1
        return prev

    def _prev_sample(self, sample, t: int, prev_t: int, model_output):
        # formula (9) of the PNDM paper
        a_t = np.float64(self.alphas_cumprod[t])
        a_prev = np.float64(self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod)
        b_t, b_prev = 1 - a_t, 1 - a_prev
        if self.config["prediction_type"] == "v_prediction":
            model_output = a_t**0.5 * model_output + b_t**0.5 * sample
        sample_coeff = (a_prev / a_t) ** 0.5
        denom = a_t * b_prev**0.5 + (a_t * b_t * a_prev) ** 0.5
        return sample_coeff * sample - (a_prev - a_t) * model_output / denom


class DDIMScheduler(Scheduler):
    """diffusers ``DDIMScheduler``, deterministic (eta = 0, the pipelines' default)."""

    name = "ddim"

    def _validate(self) -> None:
        _check_choice(self.name, self.config, "prediction_type", ("epsilon", "sample", "v_prediction"))

    def _post_init(self) -> None:
        self.final_alpha_cumprod = (
            np.float32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        )

    def _set_timesteps(self, n: int) -> None:
        cfg, T = self.config, self.num_train_timesteps
        if cfg["timestep_spacing"] == "linspace":
            ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        elif cfg["timestep_spacing"] == "leading":
            ts = _leading_int(n, T, cfg["steps_offset"])[::-1].copy()
        else:
            ts = _trailing_int(n, T)
        _check_alpha_index(self, ts)
        self.timesteps = ts

    def _step(self, model_output, timestep, sample):
        cfg = self.config
        t = int(_scalar(timestep))
        # as diffusers: the previous timestep is t - num_train // n whatever the spacing
        prev_t = t - self.num_train_timesteps // self.num_inference_steps
        a_t = np.float64(self.alphas_cumprod[t])
        a_prev = np.float64(self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod)
        b_t = 1 - a_t
        ptype = cfg["prediction_type"]
        if ptype == "epsilon":
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
            eps = model_output
        elif ptype == "sample":
            x0 = model_output
            eps = (sample - a_t**0.5 * x0) / b_t**0.5
        else:  # v_prediction
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
            eps = a_t**0.5 * model_output + b_t**0.5 * sample
        if cfg["thresholding"]:
            x0 = _threshold_sample(x0, cfg["dynamic_thresholding_ratio"], cfg["sample_max_value"])
        elif cfg["clip_sample"]:
            r = cfg["clip_sample_range"]
            x0 = np.clip(x0, -r, r)
        # eta = 0: std_dev_t = 0, so no noise term and the direction uses the full 1 - a_prev
        return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


# --------------------------------------------------------------------------------------------------
# sigma-indexed schedulers (Euler, DPM-Solver++, UniPC): state advances by an internal step index


def _linspace_desc(n: int, last: int) -> np.ndarray:
    # DPM / UniPC "linspace": n + 1 points on [0, last - 1], drop the final 0
    return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)


def _leading_desc(n: int, last: int, offset: int) -> np.ndarray:
    step_ratio = last // (n + 1)
    return (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64) + offset


class _SigmaScheduler(Scheduler):
    """Shared parts of the schedulers that walk a float32 ``sigmas`` table with a step index."""

    _needs_distinct_timesteps = True

    def _post_init(self) -> None:
        if self.config["rescale_betas_zero_snr"]:
            # as diffusers: close to 0 without being 0 so the first sigma is finite
            self.alphas_cumprod[-1] = np.float32(2.0**-24)
        ac = self.alphas_cumprod
        self._train_sigmas = ((np.float32(1.0) - ac) / ac) ** np.float32(0.5)  # float32, ascending in t
        self.sigmas = np.zeros(0, dtype=np.float32)
        self._step_index: int | None = None

    def _set_integer_schedule(self, ts: np.ndarray) -> None:
        """Timesteps ``ts`` (descending) and their interpolated sigmas plus the final one (DPM, UniPC)."""
        sigmas = np.interp(ts, np.arange(0, len(self._train_sigmas)), self._train_sigmas)
        self.sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(np.float32)
        self.timesteps = ts.astype(np.int64)
        self._reset()

    def _final_sigma(self) -> float:
        if self.config["final_sigmas_type"] == "sigma_min":
            ac0 = self.alphas_cumprod[0]
            return ((np.float32(1.0) - ac0) / ac0) ** np.float32(0.5)
        return 0.0

    def _check_final_sigmas(self) -> None:
        _check_choice(self.name, self.config, "final_sigmas_type", ("zero", "sigma_min"))

    def _index_for_timestep(self, timestep: Any) -> int:
        """diffusers' index_for_timestep: first match, or the second if the value repeats."""
        value = _scalar(timestep)
        hits = np.nonzero(self.timesteps == value)[0]
        if len(hits) == 0:
            return self._no_match(value)
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _no_match(self, value) -> int:
        # DPM / UniPC fall back to the last step (diffusers behaviour)
        return len(self.timesteps) - 1

    def _init_step_index(self, timestep: Any) -> None:
        if self._step_index is None:
            self._step_index = self._index_for_timestep(timestep)

    @staticmethod
    def _alpha_sigma(sigma: float) -> tuple[float, float]:
        # VP schedule: x_t = alpha_t x0 + sigma_t eps with sigma the Karras-style noise level
        alpha_t = 1.0 / math.sqrt(sigma * sigma + 1.0)
        return alpha_t, sigma * alpha_t

    @staticmethod
    def _lambda(alpha_t: float, sigma_t: float) -> float:
        # log-SNR; +inf at the final sigma 0, as torch.log(0) = -inf gives in diffusers
        if sigma_t == 0.0:
            return math.inf
        return math.log(alpha_t) - math.log(sigma_t)

    def _convert_to_x0(self, model_output, sample):
        """Data prediction x0 at the current step (DPM-Solver++ / UniC-P with predict_x0)."""
        cfg = self.config
        alpha_t, sigma_t = self._alpha_sigma(float(self.sigmas[self._step_index]))
        ptype = cfg["prediction_type"]
        if ptype == "epsilon":
            x0 = (sample - sigma_t * model_output) / alpha_t
        elif ptype == "sample":
            x0 = model_output
        else:  # v_prediction
            x0 = alpha_t * sample - sigma_t * model_output
        if cfg["thresholding"]:
            x0 = _threshold_sample(x0, cfg["dynamic_thresholding_ratio"], cfg["sample_max_value"])
        return x0

    def _check_sigma_options(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            if self.config[key]:
                raise _refuse(self.name, key, self.config[key], "False (only the default sigmas are implemented)")


class EulerDiscreteScheduler(_SigmaScheduler):
    """diffusers ``EulerDiscreteScheduler`` (k-diffusion Euler, s_churn = 0)."""

    name = "euler"
    _timestep_dtype = np.float32

    def _validate(self) -> None:
        cfg = self.config
        self._check_sigma_options(("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"))
        _check_choice(self.name, cfg, "prediction_type", ("epsilon", "v_prediction", "sample", "original_sample"))
        _check_choice(self.name, cfg, "interpolation_type", ("linear", "log_linear"))
        _check_choice(self.name, cfg, "timestep_type", ("discrete", "continuous"))
        if cfg["timestep_type"] == "continuous" and cfg["prediction_type"] == "v_prediction":
            raise _refuse(
                self.name, "timestep_type", "continuous",
                "'discrete' with prediction_type v_prediction (EDM-style timesteps are not implemented)",
            )
        self._check_final_sigmas()

    def _post_init(self) -> None:
        super()._post_init()
        # before set_timesteps diffusers holds the full training schedule (init_noise_sigma reads it)
        self.sigmas = np.concatenate([self._train_sigmas[::-1], np.zeros(1, np.float32)]).astype(np.float32)

    @property
    def init_noise_sigma(self) -> float:
        max_sigma = np.max(self.sigmas)
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return float(max_sigma)
        # leading spacing starts below sigma_max; float32 like diffusers' tensor math
        return float((max_sigma**2 + np.float32(1.0)) ** np.float32(0.5))

    def _set_timesteps(self, n: int) -> None:
        cfg, T = self.config, self.num_train_timesteps
        if cfg["timestep_spacing"] == "linspace":
            ts = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
        elif cfg["timestep_spacing"] == "leading":
            step_ratio = T // n
            ts = (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.float32)
            ts += cfg["steps_offset"]
        else:
            step_ratio = T / n
            ts = np.arange(T, 0, -step_ratio).round().copy().astype(np.float32)
            ts -= 1
        train = self._train_sigmas
        if cfg["interpolation_type"] == "linear":
            # sigma at fractional / integer timesteps: linear interpolation of the float32 table
            sigmas = np.interp(ts, np.arange(0, len(train)), train)
        else:  # log_linear: geometric spacing from sigma_max to sigma_min, torch float32 linspace
            sigmas = np.exp(_torch_linspace_f32(float(np.log(train[-1])), float(np.log(train[0])), n + 1))
        self.sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(np.float32)
        self.timesteps = ts.astype(np.float32)
        self._step_index = None

    def _no_match(self, value) -> int:
        raise InputError(
            f"timestep {value!r} is not one of scheduler {self.name!r}'s timesteps "
            f"{self.timesteps.tolist()}; pass an element of scheduler.timesteps"
        )

    def scale_model_input(self, sample: np.ndarray, timestep: Any) -> np.ndarray:
        """``sample / sqrt(sigma^2 + 1)`` for the current sigma (k-diffusion input scaling)."""
        if self.num_inference_steps is None:
            raise RuntimeError(f"scheduler {self.name!r}: call set_timesteps() before scale_model_input()")
        self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        # denominator in float32 as diffusers computes it from its float32 sigma tensor
        denom = (sigma * sigma + np.float32(1.0)) ** np.float32(0.5)
        sample = np.asarray(sample)
        return (sample / denom).astype(sample.dtype, copy=False)

    def _step(self, model_output, timestep, sample):
        self._init_step_index(timestep)
        i = self._step_index
        sigma = float(self.sigmas[i])  # s_churn = 0 -> gamma = 0 -> sigma_hat = sigma
        ptype = self.config["prediction_type"]
        if ptype in ("sample", "original_sample"):
            x0 = model_output
        elif ptype == "epsilon":
            x0 = sample - sigma * model_output
        else:  # v_prediction: denoised = model_output * c_out + input * c_skip
            x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        derivative = (sample - x0) / sigma
        dt = float(self.sigmas[i + 1]) - sigma
        self._step_index = i + 1
        return sample + derivative * dt


class DPMSolverMultistepScheduler(_SigmaScheduler):
    """diffusers ``DPMSolverMultistepScheduler`` as DPM-Solver++(2M): ``algorithm_type="dpmsolver++"``,
    ``solver_order=2``, midpoint or heun second-order update, first-order warm-up and final steps."""

    name = "dpm++2m"

    def _validate(self) -> None:
        cfg = self.config
        # diffusers' __init__ rewrites these two before storing the config
        if cfg["algorithm_type"] == "deis":
            cfg["algorithm_type"] = "dpmsolver++"
        if cfg["solver_type"] in ("logrho", "bh1", "bh2"):
            cfg["solver_type"] = "midpoint"
        _check_choice(self.name, cfg, "algorithm_type", ("dpmsolver++",))
        _check_choice(self.name, cfg, "solver_type", ("midpoint", "heun"))
        if cfg["solver_order"] != 2:
            raise _refuse(self.name, "solver_order", cfg["solver_order"], "2 (this key is DPM-Solver++ 2M)")
        _check_choice(self.name, cfg, "prediction_type", ("epsilon", "sample", "v_prediction"))
        if cfg["variance_type"] in ("learned", "learned_range"):
            raise _refuse(self.name, "variance_type", cfg["variance_type"], "None")
        self._check_sigma_options(
            ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas")
        )
        self._check_final_sigmas()

    def _post_init(self) -> None:
        super()._post_init()
        ac = self.alphas_cumprod
        # float32 log-SNR table, only used for lambda_min_clipped (cosine schedules)
        self._lambda_t = np.log(np.sqrt(ac)) - np.log(np.sqrt(np.float32(1.0) - ac))
        self._reset()

    def _reset(self) -> None:
        self._model_outputs: list[np.ndarray | None] = [None, None]
        self._lower_order_nums = 0
        self._step_index = None

    def _set_timesteps(self, n: int) -> None:
        cfg, T = self.config, self.num_train_timesteps
        clipped_idx = int(np.searchsorted(self._lambda_t[::-1], cfg["lambda_min_clipped"], side="left"))
        last = T - clipped_idx
        if cfg["timestep_spacing"] == "linspace":
            ts = _linspace_desc(n, last)
        elif cfg["timestep_spacing"] == "leading":
            ts = _leading_desc(n, last, cfg["steps_offset"])
        else:
            step_ratio = T / n
            ts = np.arange(last, 0, -step_ratio).round().copy().astype(np.int64) - 1
        self._set_integer_schedule(ts)

    def _step(self, model_output, timestep, sample):
        cfg = self.config
        self._init_step_index(timestep)
        i, n = self._step_index, len(self.timesteps)
        # "Improve numerical stability for small number of steps": first order at the last step
        lower_order_final = i == n - 1 and (
            cfg["euler_at_final"] or (cfg["lower_order_final"] and n < 15) or cfg["final_sigmas_type"] == "zero"
        )
        x0 = self._convert_to_x0(model_output, sample)
        self._model_outputs = [self._model_outputs[1], x0]
        if self._lower_order_nums < 1 or lower_order_final:
            prev = self._first_order(x0, sample)
        else:
            prev = self._second_order(sample)
        self._lower_order_nums = min(self._lower_order_nums + 1, 2)
        self._step_index = i + 1
        return prev

    def _first_order(self, x0, sample):
        i = self._step_index
        alpha_t, sigma_t = self._alpha_sigma(float(self.sigmas[i + 1]))
        alpha_s, sigma_s = self._alpha_sigma(float(self.sigmas[i]))
        h = self._lambda(alpha_t, sigma_t) - self._lambda(alpha_s, sigma_s)
        # DPM-Solver++ 1st order (= DDIM); exp(-inf) = 0 gives x0 exactly at sigma 0
        return (sigma_t / sigma_s) * sample - (alpha_t * (math.exp(-h) - 1.0)) * x0

    def _second_order(self, sample):
        i = self._step_index
        alpha_t, sigma_t = self._alpha_sigma(float(self.sigmas[i + 1]))
        alpha_s0, sigma_s0 = self._alpha_sigma(float(self.sigmas[i]))
        alpha_s1, sigma_s1 = self._alpha_sigma(float(self.sigmas[i - 1]))
        lambda_t = self._lambda(alpha_t, sigma_t)
        lambda_s0 = self._lambda(alpha_s0, sigma_s0)
        lambda_s1 = self._lambda(alpha_s1, sigma_s1)
        m1, m0 = self._model_outputs
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (1.0 / r0) * (m0 - m1)
        e = math.exp(-h) - 1.0
        if self.config["solver_type"] == "midpoint":
            return (sigma_t / sigma_s0) * sample - (alpha_t * e) * d0 - 0.5 * (alpha_t * e) * d1
        return (sigma_t / sigma_s0) * sample - (alpha_t * e) * d0 + (alpha_t * (e / h + 1.0)) * d1


class UniPCMultistepScheduler(_SigmaScheduler):
    """diffusers ``UniPCMultistepScheduler`` with ``predict_x0=True``, ``solver_order=2``, bh1 / bh2.

    Each step first corrects the incoming sample with UniC (using the new model output), then
    predicts the next sample with UniP. The final returned sample is predictor-only, as in diffusers.
    """

    name = "unipc"

    def _validate(self) -> None:
        cfg = self.config
        if cfg["solver_type"] in ("midpoint", "heun", "logrho"):
            cfg["solver_type"] = "bh2"  # diffusers' __init__ rewrites these
        _check_choice(self.name, cfg, "solver_type", ("bh1", "bh2"))
        if cfg["solver_order"] != 2:
            raise _refuse(self.name, "solver_order", cfg["solver_order"], "2")
        if cfg["predict_x0"] is not True:
            raise _refuse(self.name, "predict_x0", cfg["predict_x0"], "True (the data-prediction variant)")
        _check_choice(self.name, cfg, "prediction_type", ("epsilon", "sample", "v_prediction"))
        if cfg["solver_p"] is not None:
            raise _refuse(self.name, "solver_p", cfg["solver_p"], "None")
        self._check_sigma_options(("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas"))
        if cfg["use_dynamic_shifting"]:
            # diffusers requires a `mu` per call then; it is a flow-matching option
            raise _refuse(self.name, "use_dynamic_shifting", True, "False")
        if cfg["shift_terminal"] is not None:
            raise _refuse(self.name, "shift_terminal", cfg["shift_terminal"], "None (flow sigmas only)")
        self._check_final_sigmas()
        if cfg["final_sigmas_type"] == "zero":
            # The last UniP step lands on sigma = 0, whose log-SNR is infinite. diffusers' output is
            # then inf / NaN with a 2nd-order last step (lower_order_final=False) or with bh1
            # (B(h) = h = -inf times a zero residual). Refuse rather than reproduce that.
            if not cfg["lower_order_final"]:
                raise _refuse(
                    self.name, "lower_order_final", False,
                    "True, or False with final_sigmas_type='sigma_min' (diffusers returns NaN otherwise)",
                )
            if cfg["solver_type"] == "bh1":
                raise _refuse(
                    self.name, "solver_type", "bh1",
                    "'bh2', or 'bh1' with final_sigmas_type='sigma_min' (diffusers returns NaN otherwise)",
                )
        dc = cfg["disable_corrector"]
        if dc is None or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in dc):
            raise InputError(f"scheduler 'unipc': config disable_corrector={dc!r} must be a list of step indices")

    def _post_init(self) -> None:
        super()._post_init()
        self._disable_corrector = {int(v) for v in self.config["disable_corrector"]}
        self._reset()

    def _reset(self) -> None:
        self._model_outputs: list[np.ndarray | None] = [None, None]
        self._lower_order_nums = 0
        self._last_sample: np.ndarray | None = None
        self._this_order = 1
        self._step_index = None

    def _set_timesteps(self, n: int) -> None:
        cfg, T = self.config, self.num_train_timesteps
        if cfg["timestep_spacing"] == "linspace":
            ts = _linspace_desc(n, T)
        elif cfg["timestep_spacing"] == "leading":
            ts = _leading_desc(n, T, cfg["steps_offset"])
        else:
            ts = _trailing_int(n, T)
        self._set_integer_schedule(ts)

    def _step(self, model_output, timestep, sample):
        cfg = self.config
        self._init_step_index(timestep)
        i = self._step_index
        use_corrector = i > 0 and (i - 1) not in self._disable_corrector and self._last_sample is not None
        # x0 from the uncorrected sample, as diffusers converts before correcting
        x0 = self._convert_to_x0(model_output, sample)
        if use_corrector:
            sample = self._uni_c(x0, self._last_sample, sample, self._this_order)
        self._model_outputs = [self._model_outputs[1], x0]
        order = min(2, len(self.timesteps) - i) if cfg["lower_order_final"] else 2
        self._this_order = min(order, self._lower_order_nums + 1)  # warm-up of the multistep
        self._last_sample = sample
        prev = self._uni_p(sample, self._this_order)
        self._lower_order_nums = min(self._lower_order_nums + 1, 2)
        self._step_index = i + 1
        return prev

    def _bh_terms(self, h: float, order: int) -> tuple[float, float, list[float]]:
        """h_phi_1, B(h) and the right-hand side b of the UniPC order conditions (predict_x0)."""
        hh = -h
        h_phi_1 = math.expm1(hh)  # h * phi_1(h) = e^h - 1
        h_phi_k = h_phi_1 / hh - 1.0
        b_h = hh if self.config["solver_type"] == "bh1" else math.expm1(hh)
        b, factorial_i = [], 1
        for k in range(1, order + 1):
            b.append(h_phi_k * factorial_i / b_h)
            factorial_i *= k + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial_i
        return h_phi_1, b_h, b

    def _lambda_at(self, idx: int) -> tuple[float, float, float]:
        alpha, sigma = self._alpha_sigma(float(self.sigmas[idx]))
        return alpha, sigma, self._lambda(alpha, sigma)

    def _uni_p(self, x, order: int):
        """UniP-bh predictor from sigmas[i] to sigmas[i + 1]."""
        i = self._step_index
        m1, m0 = self._model_outputs
        alpha_t, sigma_t, lambda_t = self._lambda_at(i + 1)
        _, sigma_s0, lambda_s0 = self._lambda_at(i)
        h = lambda_t - lambda_s0
        h_phi_1, b_h, _ = self._bh_terms(h, order)
        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        if order == 2:
            lambda_s1 = self._lambda_at(i - 1)[2]
            rk = (lambda_s1 - lambda_s0) / h
            d1 = (m1 - m0) / rk
            # diffusers' simplified order-2 predictor: rhos_p = [0.5]
            x_t = x_t - alpha_t * b_h * (0.5 * d1)
        return x_t

    def _uni_c(self, model_t, last_sample, this_sample, order: int):
        """UniC-bh corrector of ``this_sample`` at sigmas[i], from last_sample at sigmas[i - 1]."""
        i = self._step_index
        m1, m0 = self._model_outputs  # before this step's shift: m0 is the previous x0
        alpha_t, sigma_t, lambda_t = self._lambda_at(i)
        _, sigma_s0, lambda_s0 = self._lambda_at(i - 1)
        h = lambda_t - lambda_s0
        h_phi_1, b_h, b = self._bh_terms(h, order)
        x_t = sigma_t / sigma_s0 * last_sample - alpha_t * h_phi_1 * m0
        d1_t = model_t - m0
        if order == 1:
            return x_t - alpha_t * b_h * (0.5 * d1_t)
        lambda_s1 = self._lambda_at(i - 2)[2]
        rk = (lambda_s1 - lambda_s0) / h
        # order conditions R rho = b with R rows rks^0, rks^1 and rks = [rk, 1]
        rhos_c = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), np.array(b))
        d1 = (m1 - m0) / rk
        return x_t - alpha_t * b_h * (rhos_c[0] * d1 + rhos_c[1] * d1_t)


# --------------------------------------------------------------------------------------------------
# factory

_CLASSES: dict[str, type[Scheduler]] = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}


def make_scheduler(name: str, config: dict) -> Scheduler:
    """Build scheduler ``name`` as ``DiffusersClass.from_config(config)`` would.

    Args:
        name: one of :data:`SCHEDULER_NAMES`.
        config: a diffusers ``scheduler_config.json`` dict, usually the base model's (any class).
    Returns:
        A :class:`Scheduler`; call ``set_timesteps`` before the loop.
    Raises:
        InputError: unknown ``name``, or a config option this runtime does not reproduce.
    """
    check_scheduler_name(name)
    return _CLASSES[name](config)
