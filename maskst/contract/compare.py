"""Parity of an exported graph with its PyTorch module, right after export.

Every output is compared (``|onnx - torch| <= atol + rtol * |torch|`` element-wise, as
numpy.allclose), the worst error is recorded, all failures are collected and raised together as
one :class:`maskst.errors.ParityError`. A tolerance failure is never downgraded to a warning.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from maskst.errors import ParityError
from maskst.contract.spec import GraphSpec


@dataclasses.dataclass(frozen=True)
class ParityResult:
    graph: str
    output: str
    case: int
    shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    atol: float
    rtol: float
    passed: bool

    def describe(self) -> str:
        return (f"{self.graph}.{self.output} (case {self.case}, shape {list(self.shape)}): max abs err "
                f"{self.max_abs_err:.3g}, max rel err {self.max_rel_err:.3g} (atol {self.atol:g}, rtol {self.rtol:g})")


def compare(graph: GraphSpec, case: int, expected: dict[str, np.ndarray], actual: dict[str, np.ndarray],
            atol: float | None = None, rtol: float | None = None) -> list[ParityResult]:
    atol = graph.atol if atol is None else atol
    rtol = graph.rtol if rtol is None else rtol
    results = []
    for out in graph.outputs:
        want, got = np.asarray(expected[out.name]), np.asarray(actual[out.name])
        if want.shape != got.shape:
            results.append(ParityResult(graph.name, out.name, case, tuple(got.shape), float("inf"), float("inf"), atol, rtol, False))
            continue
        if want.dtype == bool:
            diff = float(np.count_nonzero(want != got))
            results.append(ParityResult(graph.name, out.name, case, want.shape, diff, diff, 0.0, 0.0, diff == 0))
            continue
        want64, got64 = want.astype(np.float64), got.astype(np.float64)
        finite = bool(np.all(np.isfinite(got64)))
        err = np.abs(got64 - want64)
        max_abs = float(err.max()) if err.size else 0.0
        max_rel = float((err / np.maximum(np.abs(want64), 1e-12)).max()) if err.size else 0.0
        passed = finite and bool(np.all(err <= atol + rtol * np.abs(want64)))
        results.append(ParityResult(graph.name, out.name, case, want.shape, max_abs, max_rel, atol, rtol, passed))
    return results


def raise_failures(results: list[ParityResult]) -> None:
    failures = [r for r in results if not r.passed]
    if failures:
        lines = "\n  ".join(r.describe() for r in failures)
        raise ParityError(f"{len(failures)} parity check(s) failed against the PyTorch reference:\n  {lines}", failures)
