"""Parity of maskst.runtime.schedulers (numpy) with diffusers 0.42 (torch), step by step.

torch and diffusers are imported inside the tests only (``pytest.importorskip``): the module under
test must not need them, and the tests that do not compare with diffusers run without them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maskst.errors import InputError
from maskst.contract.wire import SCHEDULER_NAMES, diffusers_class_name, scheduler_name_from_config
from maskst.runtime.schedulers import Scheduler, make_scheduler

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (also /work/shared/configs/sd15):
# PNDM, scaled_linear, steps_offset 1, no prediction_type / timestep_spacing.
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# A second, different family: linear betas, trailing spacing, v-prediction (SD 2.x-like).
ALT = dict(
    SD15, beta_schedule="linear", beta_start=0.0001, beta_end=0.02, timestep_spacing="trailing",
    prediction_type="v_prediction", steps_offset=0,
)
SD15_NO_CLIP_KEY = {k: v for k, v in SD15.items() if k != "clip_sample"}
# zero terminal SNR + v-prediction + trailing: the combination arXiv 2305.08891 prescribes
ZSNR = dict(SD15, prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True)

CONFIGS = {"sd15": SD15, "alt": ALT}

# Further options, each with one step count: (scheduler, config).
EXTRA_CASES = {
    "ddim-clip-default": ("ddim", SD15_NO_CLIP_KEY),  # DDIM's clip_sample default True kicks in
    "ddim-threshold": ("ddim", dict(SD15, thresholding=True, sample_max_value=1.5)),
    "ddim-sample-linspace": ("ddim", dict(SD15, prediction_type="sample", timestep_spacing="linspace")),
    "ddim-cosine-alpha1": ("ddim", dict(SD15, beta_schedule="squaredcos_cap_v2", set_alpha_to_one=True)),
    "ddim-zsnr": ("ddim", ZSNR),
    "pndm-linspace": ("pndm", dict(SD15, timestep_spacing="linspace")),
    "pndm-trailing-alpha1": ("pndm", dict(SD15, timestep_spacing="trailing", set_alpha_to_one=True)),
    "euler-leading": ("euler", dict(SD15, timestep_spacing="leading")),
    "euler-loglinear": ("euler", dict(SD15, interpolation_type="log_linear")),
    "euler-sigmamin-sample": ("euler", dict(SD15, final_sigmas_type="sigma_min", prediction_type="sample")),
    "euler-zsnr": ("euler", ZSNR),
    "euler-trained-betas": ("euler", dict(SD15, trained_betas=np.linspace(1e-4, 0.02, 1000).tolist())),
    "dpm-heun-sigmamin": ("dpm++2m", dict(SD15, solver_type="heun", final_sigmas_type="sigma_min")),
    "dpm-euler-at-final-leading": (
        "dpm++2m", dict(SD15, euler_at_final=True, lower_order_final=False, timestep_spacing="leading"),
    ),
    "dpm-cosine-lambda-clip": ("dpm++2m", dict(SD15, beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1)),
    "dpm-threshold-sample": ("dpm++2m", dict(SD15, thresholding=True, prediction_type="sample")),
    "dpm-zsnr": ("dpm++2m", ZSNR),
    "unipc-bh1-sigmamin": ("unipc", dict(SD15, solver_type="bh1", final_sigmas_type="sigma_min")),
    "unipc-no-lof-sigmamin": ("unipc", dict(SD15, lower_order_final=False, final_sigmas_type="sigma_min")),
    "unipc-disable-corrector": ("unipc", dict(SD15, disable_corrector=[0, 2], timestep_spacing="leading")),
    "unipc-threshold": ("unipc", dict(SD15, thresholding=True)),
    "unipc-zsnr": ("unipc", ZSNR),
}

# Tolerance. diffusers evaluates each step in float32 (unit roundoff 6e-8), we in float64 from
# the same float32 tables, so the two differ by float32 rounding of terms of the size of the data:
# the noise scale init_noise_sigma (up to 4096 with zero-terminal-SNR Euler) and the latents seen so
# far. Cancellation amplifies it (Euler's x + d*dt at sigma ~ 157 - 4096, PNDM's sqrt(a_prev/a_t)
# ~ 157 at t = 999) and it is carried into later steps; measured maxima are 1e-7 .. 3e-6 of that
# scale. atol = 1e-5 * scale keeps ~3x headroom while a wrong formula or off-by-one sigma (>= 1e-3
# of the scale) fails.
REL_TOL = 1e-5
SHAPE = (2, 4, 8, 8)


def _diffusers_scheduler(name: str, config: dict):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    return getattr(diffusers, diffusers_class_name(name)).from_config(config)


def _run_ours(sched: Scheduler, n: int, seed: int = 0, dtype=np.float32) -> list[np.ndarray]:
    """Full loop with the fake model ``0.3 * model_input + noise_k``; returns every prev_sample."""
    rng = np.random.default_rng(seed)
    sched.set_timesteps(n)
    x = (rng.standard_normal(SHAPE) * sched.init_noise_sigma).astype(dtype)
    out = []
    for t in sched.timesteps:
        noise = rng.standard_normal(SHAPE).astype(dtype)
        x_in = sched.scale_model_input(x, t)
        x = sched.step((0.3 * x_in + noise).astype(dtype), t, x)
        out.append(x)
    return out


def _compare_with_diffusers(name: str, config: dict, n: int) -> None:
    import torch

    ref = _diffusers_scheduler(name, config)
    ours = make_scheduler(name, config)
    ref.set_timesteps(n)
    ours.set_timesteps(n)

    ref_ts = ref.timesteps.numpy()
    assert ours.timesteps.dtype == ref_ts.dtype  # int64, float32 for Euler
    np.testing.assert_array_equal(ours.timesteps, ref_ts)
    ref_sigma = float(ref.init_noise_sigma)
    assert ours.init_noise_sigma == pytest.approx(ref_sigma, rel=1e-6)

    rng = np.random.default_rng(1234)
    x0 = (rng.standard_normal(SHAPE) * ref_sigma).astype(np.float32)
    x_ref, x_ours = torch.from_numpy(x0.copy()), x0.copy()
    scale = max(1.0, ref_sigma)
    for k, t in enumerate(ref.timesteps):
        noise = rng.standard_normal(SHAPE).astype(np.float32)  # same per-step noise on both sides
        scale = max(scale, float(x_ref.abs().max()))
        in_ref = ref.scale_model_input(x_ref, t)
        in_ours = ours.scale_model_input(x_ours, ours.timesteps[k])
        assert in_ours.dtype == np.float32 and in_ours.shape == SHAPE
        np.testing.assert_allclose(in_ours, in_ref.numpy(), rtol=0, atol=REL_TOL * scale, err_msg=f"input {k}")
        x_ref = ref.step(0.3 * in_ref + torch.from_numpy(noise), t, x_ref).prev_sample
        x_ours = ours.step((0.3 * in_ours + noise).astype(np.float32), ours.timesteps[k], x_ours)
        assert x_ours.dtype == np.float32 and x_ours.shape == SHAPE
        scale = max(scale, float(x_ref.abs().max()))
        np.testing.assert_allclose(x_ours, x_ref.numpy(), rtol=0, atol=REL_TOL * scale, err_msg=f"step {k} t={t}")
    assert np.isfinite(x_ours).all()


@pytest.mark.parametrize("n", [5, 12])
@pytest.mark.parametrize("config_id", sorted(CONFIGS))
@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_matches_diffusers(name, config_id, n):
    _compare_with_diffusers(name, CONFIGS[config_id], n)


@pytest.mark.parametrize("n", [1, 2, 16])  # single step, warm-up only, >= 15 steps (DPM/UniPC final)
@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_matches_diffusers_edge_step_counts(name, n):
    _compare_with_diffusers(name, SD15, n)


@pytest.mark.parametrize("case", sorted(EXTRA_CASES))
def test_matches_diffusers_options(case):
    name, config = EXTRA_CASES[case]
    _compare_with_diffusers(name, config, 7)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_resolved_config_matches_from_config(name):
    """``config`` holds the class's __init__ keys with the values DiffusersClass.from_config(base)
    resolved (diffusers' config also keeps the base config's unknown keys, unused; we drop them)."""
    import inspect

    init_keys = set(inspect.signature(type(_diffusers_scheduler(name, {})).__init__).parameters) - {"self"}
    euler_written = dict(_diffusers_scheduler("euler", SD15).config)  # has _use_default_values
    unipc_like = dict(SD15, _class_name="UniPCMultistepScheduler", solver_type="bh2", predict_x0=True)
    for config in (SD15, ALT, SD15_NO_CLIP_KEY, euler_written, unipc_like):
        ours = make_scheduler(name, config).config
        assert set(ours) == init_keys
        ref = _diffusers_scheduler(name, config).config
        assert ours == {k: ref[k] for k in ours}


def test_ddim_clip_sample_follows_from_config():
    assert make_scheduler("ddim", SD15).config["clip_sample"] is False
    assert make_scheduler("ddim", SD15).config["set_alpha_to_one"] is False
    assert make_scheduler("ddim", SD15_NO_CLIP_KEY).config["clip_sample"] is True
    assert _diffusers_scheduler("ddim", SD15_NO_CLIP_KEY).config.clip_sample is True
    # and it is applied: x0 clipped to [-1, 1] bounds the result (the last step adds
    # sqrt(1 - alphas_cumprod[0]) * eps ~ 0.03 * eps on top), unclipped it does not
    a = _run_ours(make_scheduler("ddim", SD15), 5)[-1]
    b = _run_ours(make_scheduler("ddim", SD15_NO_CLIP_KEY), 5)[-1]
    assert np.abs(b).max() < 1.2 < np.abs(a).max()


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_reuse_after_set_timesteps_is_identical(name):
    sched = make_scheduler(name, SD15)
    first = _run_ours(sched, 5)
    # leave multistep state half-way through a different schedule, then start over
    sched.set_timesteps(12)
    x = np.ones(SHAPE, np.float32)
    for t in sched.timesteps[:3]:
        x = sched.step(0.5 * sched.scale_model_input(x, t), t, x)
    second = _run_ours(sched, 5)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_dtype_follows_sample(name):
    out = _run_ours(make_scheduler(name, SD15), 3, dtype=np.float16)
    assert all(o.dtype == np.float16 and np.isfinite(o).all() for o in out)


def test_unknown_name_raises_naming_value_and_choices():
    with pytest.raises(InputError) as err:
        make_scheduler("lms-karras", SD15)
    assert "lms-karras" in str(err.value)
    assert all(n in str(err.value) for n in SCHEDULER_NAMES)
    with pytest.raises(InputError, match="lms-karras"):
        diffusers_class_name("lms-karras")


def test_name_class_mapping_roundtrip():
    for name in SCHEDULER_NAMES:
        assert scheduler_name_from_config({"_class_name": diffusers_class_name(name)}) == name
    assert scheduler_name_from_config(SD15) == "pndm"
    assert diffusers_class_name("ddim") == "DDIMScheduler"
    with pytest.raises(InputError, match="LMSDiscreteScheduler"):
        scheduler_name_from_config({"_class_name": "LMSDiscreteScheduler"})
    with pytest.raises(InputError, match="None"):
        scheduler_name_from_config({})


@pytest.mark.parametrize(
    "name, config, key",
    [
        ("pndm", dict(SD15, skip_prk_steps=False), "skip_prk_steps"),
        ("pndm", {}, "skip_prk_steps"),  # PNDM's own default is False
        ("pndm", dict(SD15, prediction_type="sample"), "prediction_type"),
        ("euler", dict(SD15, use_karras_sigmas=True), "use_karras_sigmas"),
        ("euler", dict(SD15, timestep_type="continuous", prediction_type="v_prediction"), "timestep_type"),
        ("dpm++2m", dict(SD15, use_karras_sigmas=True), "use_karras_sigmas"),
        ("dpm++2m", dict(SD15, algorithm_type="sde-dpmsolver++"), "algorithm_type"),
        ("dpm++2m", dict(SD15, solver_order=3), "solver_order"),
        ("dpm++2m", dict(SD15, final_sigmas_type="bogus"), "final_sigmas_type"),
        ("unipc", dict(SD15, predict_x0=False), "predict_x0"),
        ("unipc", dict(SD15, solver_type="bh1"), "solver_type"),  # diffusers: NaN at sigma 0
        ("unipc", dict(SD15, lower_order_final=False), "lower_order_final"),  # idem
        ("unipc", dict(SD15, use_flow_sigmas=True), "use_flow_sigmas"),
        ("ddim", dict(SD15, beta_schedule="exp"), "beta_schedule"),
        ("ddim", dict(SD15, timestep_spacing="karras"), "timestep_spacing"),
        ("ddim", dict(SD15, trained_betas=[0.1, 0.2]), "trained_betas"),
    ],
)
def test_unsupported_options_raise(name, config, key):
    with pytest.raises(InputError, match=key):
        make_scheduler(name, config)


@pytest.mark.parametrize("bad", [0, -3, 1001, 2.5, True])
def test_bad_step_count_raises(bad):
    sched = make_scheduler("euler", SD15)
    with pytest.raises(InputError, match="num_inference_steps"):
        sched.set_timesteps(bad)


@pytest.mark.parametrize(
    "name, config, n, match",
    [
        ("ddim", SD15, 1000, "steps_offset"),  # leading 999 + offset 1 overshoots alphas_cumprod
        ("pndm", SD15, 1000, "steps_offset"),
        ("dpm++2m", SD15, 1000, "repeated timesteps"),  # linspace n+1 points on 1000 slots
        ("unipc", dict(SD15, timestep_spacing="leading"), 1000, "repeated timesteps"),
    ],
)
def test_degenerate_schedules_raise(name, config, n, match):
    with pytest.raises(InputError, match=match):
        make_scheduler(name, config).set_timesteps(n)


def test_step_before_set_timesteps_raises():
    sched = make_scheduler("dpm++2m", SD15)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(np.zeros(SHAPE, np.float32), 999, np.zeros(SHAPE, np.float32))


def test_module_does_not_import_torch():
    code = "import sys, maskst.runtime.schedulers; sys.exit('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=repo, check=False).returncode == 0


def test_scheduler_names_users_write_map_to_the_keys():
    from maskst.contract.wire import canonical_scheduler_name

    assert canonical_scheduler_name("UniPCMultistepScheduler") == "unipc"
    assert canonical_scheduler_name("DPMSolver++") == "dpm++2m"
    assert canonical_scheduler_name("EULER") == "euler"
    with pytest.raises(InputError, match="lms"):
        canonical_scheduler_name("lms")
