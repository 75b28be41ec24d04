"""``auto`` precision: bf16 where it pays on the CPU (AMX, or measured without it), one measurement per CPU."""

import json

import pytest

from maskst.hardware import CpuInfo
from maskst.runtime.bf16_probe import BF16_MIN_GAIN, PROBE_FILE, bf16_verdict

pytest.importorskip("openvino")

ZEN4 = CpuInfo("AMD EPYC 9R14", "avx2 avx512f avx512_vnni avx512_bf16", 2)
XEON_NO_AMX = CpuInfo("Intel(R) Xeon(R) Processor", "avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16", 2)
XEON_AMX = CpuInfo("Intel(R) Xeon(R) Processor", "avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8", 2)


class Probe:
    """A stand-in for the MatMul timing: returns ``gain`` and counts its calls."""

    def __init__(self, gain: float):
        self.gain, self.calls = gain, 0

    def __call__(self) -> dict:
        self.calls += 1
        return {"f32_ms": 10.0, "bf16_ms": 10.0 / self.gain, "gain": self.gain}


def test_amx_and_no_bf16_need_no_measurement():
    probe = Probe(0.5)
    assert bf16_verdict(XEON_AMX, True, None, probe).pays  # AMX: bf16 tiles, never measured
    assert not bf16_verdict(XEON_AMX, False, None, probe).pays  # OpenVINO reports no bf16 (e.g. an old build)
    assert not bf16_verdict(CpuInfo("old", "avx2 fma", 2), True, None, probe).pays
    assert not bf16_verdict(XEON_AMX.capped("avx512_core_vnni"), True, None, probe).pays  # capped below bf16
    assert probe.calls == 0


@pytest.mark.parametrize("gain, pays", [(2.05, True), (BF16_MIN_GAIN, True), (1.1, False), (0.61, False)])
def test_without_amx_the_measured_gain_decides(gain, pays):
    verdict = bf16_verdict(ZEN4, True, None, Probe(gain))
    assert verdict.pays is pays and verdict.gain == gain and f"{gain:.2f}x" in verdict.reason


def test_one_measurement_per_cpu_kept_in_the_cache(tmp_path):
    slow, fast = Probe(0.61), Probe(2.0)
    assert not bf16_verdict(XEON_NO_AMX, True, tmp_path, slow).pays
    assert not bf16_verdict(XEON_NO_AMX, True, tmp_path, fast).pays  # read back, not measured again
    assert (slow.calls, fast.calls) == (1, 0)
    assert bf16_verdict(ZEN4, True, tmp_path, fast).pays  # another CPU: its own measurement, same file
    assert bf16_verdict(XEON_NO_AMX.capped("avx512_core_bf16"), True, tmp_path, fast).pays  # a cap is another key
    assert fast.calls == 2
    records = json.loads((tmp_path / PROBE_FILE).read_text())
    assert len(records) == 3 and sorted(r["gain"] for r in records.values()) == [0.61, 2.0, 2.0]
    assert all({"f32_ms", "bf16_ms", "measured"} <= set(r) for r in records.values())  # why: readable


def test_a_damaged_cache_file_is_measured_again_and_replaced(tmp_path):
    (tmp_path / PROBE_FILE).write_text("{not json")
    probe = Probe(2.0)
    assert bf16_verdict(ZEN4, True, tmp_path, probe).pays and probe.calls == 1
    assert len(json.loads((tmp_path / PROBE_FILE).read_text())) == 1
    assert not list(tmp_path.glob(".*.tmp"))  # no partial files left


def test_the_real_probe_and_auto_agree(tmp_path):
    """On this machine: the MatMul is timed in both precisions, and ``auto`` follows the recorded verdict."""
    from maskst.hardware import cpu_info
    from maskst.runtime.bf16_probe import measure_bf16_gain
    from maskst.runtime.openvino_runner import native_bf16, resolve_precision

    result = measure_bf16_gain(repeats=2)
    assert result["gain"] == pytest.approx(result["f32_ms"] / result["bf16_ms"], rel=1e-3)
    verdict = bf16_verdict(cpu_info(), native_bf16(), tmp_path)
    assert resolve_precision("auto", tmp_path) == ("bf16" if verdict.pays else "f32")
    assert resolve_precision("f32", tmp_path) == "f32" and resolve_precision("bf16", tmp_path) == "bf16"
