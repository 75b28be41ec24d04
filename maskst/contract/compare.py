"""The one comparator: every parity check in maskst (export vs PyTorch, fp16 vs fp32, TensorRT plans
and OpenVINO vs ONNX Runtime) goes through :func:`compare_outputs` and records :class:`Comparison`.

It is Polygraphy's comparator (``Comparator.compare_accuracy`` with a ``SimpleCompareFunc`` of
per-output tolerances, ``check_error_stat="elemwise"``): an element fails when its absolute error
exceeds ``atol`` **and** its relative error (against the reference) exceeds ``rtol``; an output
passes when no element fails, and NaN/inf in the candidate always fails. ``atol_of_peak`` widens
``atol`` by a fraction of the reference output's largest magnitude, for checks whose error is
naturally relative to the output scale (bf16 on OpenVINO). Boolean outputs (the MaskST mask) use
zero tolerance: every element must agree.

Records serialise into the manifest in one format (``dataclasses.asdict``), whichever check made
them. All failures are collected; :func:`raise_failures` raises them together as one ParityError.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from maskst.errors import ParityError


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Per-output tolerance policy (see the module docstring for the rule)."""

    atol: float
    rtol: float
    atol_of_peak: float = 0.0

    def for_reference(self, reference: np.ndarray) -> tuple[float, float]:
        """(atol, rtol) in force for one reference array."""
        if reference.dtype == bool:
            return 0.0, 0.0
        peak = float(np.abs(reference).max()) if reference.size and self.atol_of_peak else 0.0
        return self.atol + self.atol_of_peak * peak, self.rtol


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One output of one case: the record every check writes into the manifest."""

    graph: str
    output: str
    case: int
    shape: tuple[int, ...]
    reference: str  # what the expected values came from, e.g. "torch", "onnxruntime-cpu fp32"
    candidate: str  # what was checked, e.g. "onnxruntime-cpu", "tensorrt plan", "openvino bf16"
    max_abs_err: float
    max_rel_err: float | None  # None where the reference has zeros and the candidate does not
    mean_abs_err: float
    atol: float
    rtol: float
    passed: bool

    def describe(self) -> str:
        rel = "n/a" if self.max_rel_err is None else f"{self.max_rel_err:.3g}"
        return (f"{self.graph}.{self.output} (case {self.case}, shape {list(self.shape)}, {self.candidate} vs "
                f"{self.reference}): max abs err {self.max_abs_err:.3g}, max rel err {rel} "
                f"(atol {self.atol:g}, rtol {self.rtol:g})")


def _finite_or_none(value) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def compare_outputs(graph: str, output_names: Sequence[str], references: Sequence[Mapping[str, np.ndarray]],
                    candidates: Sequence[Mapping[str, np.ndarray]], tolerance: Tolerance | Mapping[str, Tolerance],
                    reference: str, candidate: str) -> list[Comparison]:
    """Compare each case's outputs (``references[i]`` vs ``candidates[i]``); one record per output and case.

    ``tolerance``: one policy for every output or ``{output name: Tolerance}``.
    """
    from polygraphy.comparator import Comparator, IterationResult, RunResults
    from polygraphy.comparator.compare import OutputCompareResult, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    if len(references) != len(candidates):
        raise ValueError(f"{graph}: {len(references)} reference cases but {len(candidates)} candidate cases")
    policy = tolerance if isinstance(tolerance, Mapping) else {name: tolerance for name in output_names}
    records: list[Comparison] = []
    for case, (want, got) in enumerate(zip(references, candidates)):
        want = {name: np.asarray(want[name]) for name in output_names}
        got = {name: np.asarray(got[name]) for name in output_names}
        bounds = {name: policy[name].for_reference(want[name]) for name in output_names}
        mismatched = {name for name in output_names if want[name].shape != got[name].shape}
        compared = [name for name in output_names if name not in mismatched]
        verdicts = {}
        if compared:
            # candidate first: Polygraphy's relative error is taken against the second (the reference)
            run_results = RunResults([
                (candidate, [IterationResult({n: got[n] for n in compared}, runner_name=candidate)]),
                (reference, [IterationResult({n: want[n] for n in compared}, runner_name=reference)]),
            ])
            compare_func = SimpleCompareFunc(atol={n: bounds[n][0] for n in compared},
                                             rtol={n: bounds[n][1] for n in compared},
                                             check_error_stat="elemwise", infinities_compare_equal=False)
            with G_LOGGER.verbosity(G_LOGGER.CRITICAL), warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)  # relative error against exact zeros
                accuracy = Comparator.compare_accuracy(run_results, compare_func=compare_func)
            for result in accuracy:
                for iterations in result.values():
                    verdicts.update(iterations[0])
        for name in output_names:
            atol, rtol = bounds[name]
            verdict = verdicts.get(name)
            if isinstance(verdict, OutputCompareResult):
                records.append(Comparison(graph, name, case, tuple(want[name].shape), reference, candidate,
                                          float(verdict.max_absdiff), _finite_or_none(verdict.max_reldiff),
                                          float(verdict.mean_absdiff), atol, rtol,
                                          bool(verdict) and bool(np.all(np.isfinite(got[name])))))
            else:  # shape mismatch, or an output Polygraphy could not compare
                records.append(Comparison(graph, name, case, tuple(got[name].shape), reference, candidate,
                                          math.inf, None, math.inf, atol, rtol, False))
    return records


def raise_failures(records: Sequence[Comparison], what: str = "parity check(s)", fix: str = "") -> None:
    """One ParityError listing every failed record (nothing if all passed)."""
    failures = [r for r in records if not r.passed]
    if failures:
        lines = "\n  ".join(r.describe() for r in failures)
        raise ParityError(f"{len(failures)} {what} failed:\n  {lines}" + (f"\n{fix}" if fix else ""), failures)


def records_json(records: Sequence[Comparison]) -> list[dict]:
    """The manifest form of a list of records."""
    return [{**dataclasses.asdict(r), "shape": list(r.shape)} for r in records]


def run_onnx_cpu(path, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Outputs of an ONNX graph file on ONNX Runtime's CPU provider for each feed (Polygraphy's
    ``OnnxrtRunner`` under ``Comparator.run``): the reference side of the fp16 and TensorRT checks
    and the candidate side of the export check."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name="onnxruntime-cpu")
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        results = Comparator.run([runner], data_loader=[dict(feed) for feed in feeds])
    return [{name: np.asarray(value) for name, value in iteration.items()} for iteration in results[0][1]]
