"""The float32 image_conditioner that ``--target trt`` builds, exported and run on ONNX Runtime CPU.

``image_conditioner.build_module`` does the MaskST split in float64 for ONNX Runtime and in float32
for TensorRT (which has no float64). The float32 graph is otherwise only built inside
``export_engines(... target=trt)``, which needs a GPU; here it is built with ``build_module`` and
exported with the exporter's own ``export_onnx`` at the exporter's trace dims, then run on ONNX
Runtime CPU next to the float64 graph, against ``maskst.masking.content_mask`` (numpy, float64: the
definition), for every method x mask mode, on thousands of random embeddings: the three families of
tests/test_masking.py (normal, heavy-tailed, content-concentrated) plus two families with ties.

Dimensions: the tiny fixture's D = 48, and D = 1024 (the real ViT-H width; the fixture's adapter
with its projection widened to 1024 random columns), because float32 rounding in the split grows
with D and only D = 1024 shows it.

What float32 may legitimately change, and the bounds asserted (``_unexplained``):

* kmeans: the graph scores every split by ``S_k^2/k + S_k^2/(D-k)`` from a float32 prefix sum of
  D centred values. Against float64, on these families, that score is off by up to ~2.7 sqrt(D)
  eps32 SST (SST: total sum of squares of p; max 86 eps32 SST at D = 1024, 11 at D = 48; median
  14 and 1.9), so where two splits score within that of each other the argmax may take the other.
  Bound: a differing row's float64 within-cluster SSE exceeds the optimum by at most twice a
  4 sqrt(D) eps32 SST score error, ``8 sqrt(D) eps32 SST``. Measured worst (development runs,
  ~60,000 rows): 3.0 eps32 SST (near-ties, D = 1024), 0.9 on the continuous families. A split
  misplaced by ten elements costs ~2,000 eps32 SST at D = 1024 (median over normal rows) and is
  caught; a systematic off-by-one (median ~84 eps32 SST) is caught by the rate bound.
* quantile: ``p > q`` flips only for an element within float32 rounding of the threshold q.
  Bound: ``|p - q| <= 8 eps32 max|p|`` for every differing element (measured worst 0.13).
* rate: at most 1% of rows may differ in any family except near-ties under quantile. Measured
  with this file's seeds (2,048 rows per family): kmeans D = 1024 normal 2, heavy-tailed 1,
  exact-ties 1, near-ties 4; kmeans D = 48 exact-ties 2; 0 elsewhere. Development runs: at most
  0.33% (kmeans, D = 1024, normal, 21 / 6,400 rows).
* near-ties (both embeddings rounded to 0.1, so distinct products such as 0.2*0.3 and 0.1*0.6
  are equal in exact arithmetic and one ulp apart after rounding): whether such an element lies
  above the quantile then depends on rounding, in float64 too. The float64 graph differs from
  numpy there (ONNX Runtime's float64 arithmetic, e.g. ReduceL2's summation order, rounds
  differently from numpy's: 20-25% of rows at D = 1024, theta 0.3 and 0.7, every flipped element
  within 3e-17 max|p| of q), so the README's "masks bit-equal to numpy's" holds for inputs
  without such ties. Under quantile this family has no
  rate bound (float32: up to 154 / 512 rows at D = 1024), only the per-element bound.
* ip_tokens: the projection after the mask is the same float32 subgraph in both graphs, so where
  the masks agree the tokens agree within the export parity tolerance of the graph's spec
  (atol 1e-5, rtol 1e-4; measured: identical). Where a tie flipped an element, the tokens must be
  the projection of the embedding with the float32 graph's own mask.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter

import numpy as np
import pytest

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
MAX_DIFFERING_ROWS = 0.01  # fraction of rows (see the module docstring)
KINDS = ("normal", "heavy-tailed", "content-concentrated", "exact-ties", "near-ties")
THETAS = (0.0, 0.3, 0.7, 0.95, 1.0)


def _embeddings(kind: str, n: int, d: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """n image and content embeddings [n, d] (float32, as the encoders produce them)."""
    if kind == "normal":
        e_i, e_c = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    elif kind == "heavy-tailed":
        e_i, e_c = rng.standard_t(2, (n, d)), rng.laplace(size=(n, d))
    elif kind == "content-concentrated":  # a few elements carry the content (the paper's motivation)
        e_i = rng.standard_normal((n, d))
        e_c = 0.05 * rng.standard_normal((n, d))
        for row in range(n):
            hot = rng.choice(d, size=max(2, d // 20), replace=False)
            e_c[row, hot] += 3.0 * np.sign(e_i[row, hot])
    elif kind == "exact-ties":  # p = e_i / (|e_i| sqrt(d)): equal values stay exactly equal in any precision
        e_i, e_c = np.round(rng.standard_normal((n, d)), 1), np.ones((n, d))
    elif kind == "near-ties":  # equal products of distinct factors: ties only up to rounding
        e_i, e_c = np.round(rng.standard_normal((n, d)), 1), np.round(rng.standard_normal((n, d)), 1)
    else:
        raise ValueError(kind)
    return e_i.astype(np.float32), e_c.astype(np.float32)


@dataclasses.dataclass
class _Graph:
    spec: object
    module: object
    session: object

    def run(self, e_i, e_c, method, mode, theta=0.7, content_scale=1.0) -> tuple[np.ndarray, np.ndarray]:
        """ip_tokens and mask for every row, in batches within the spec's N range (checked)."""
        step = self.spec.dims["N"].max
        tokens, masks = [], []
        for start in range(0, len(e_i), step):
            feed = {"image_embeds": e_i[start:start + step], "content_embeds": e_c[start:start + step],
                    "method": np.array([method.index]), "mask_mode": np.array([mode.index]),
                    "theta": np.array([theta], np.float32), "content_scale": np.array([content_scale], np.float32)}
            if start == 0:
                self.spec.check_feed(feed)
            out = self.session.run(["ip_tokens", "mask"], feed)
            tokens.append(out[0])
            masks.append(out[1])
        return np.concatenate(tokens), np.concatenate(masks)

    def project(self, e_hat: np.ndarray) -> np.ndarray:
        """The adapter projection of conditioned embeddings (the torch module the graph was exported from)."""
        import torch

        with torch.no_grad():
            return self.module.proj(torch.from_numpy(np.ascontiguousarray(e_hat, np.float32))).numpy()


def _widened(ckpt, state, d: int, seed: int = 0):
    """The fixture's checkpoint set with a D-wide image embedding: the adapter projection gets d random
    columns (same scale as the fixture's), every other weight unchanged."""
    import torch

    weight = state["image_proj"]["proj.weight"]
    generator = torch.Generator().manual_seed(seed)
    wide = torch.randn(weight.shape[0], d, generator=generator) * float(weight.std())
    state = {**state, "image_proj": {**state["image_proj"], "proj.weight": wide}}
    ckpt = dataclasses.replace(ckpt, image_encoder_config={**ckpt.image_encoder_config, "projection_dim": d},
                               adapter=dataclasses.replace(ckpt.adapter, input_dim=d))
    return ckpt, state


@pytest.fixture(scope="module", params=[48, 1024], ids=["D48", "D1024"])
def graphs(request, tiny, tmp_path_factory):
    """{"fp32": the --target trt graph, "fp64": the --target onnx graph}, exported as export_engines does."""
    import onnxruntime as ort

    from maskst.checkpoints import load_adapter_state_dict, resolve_checkpoints
    from maskst.export import exporter, image_conditioner
    from maskst.export.options import ExportOptions, Target

    ckpt = resolve_checkpoints(tiny.base, tiny.ip_adapter, tiny.image_encoder, tiny.content_encoder)
    state = load_adapter_state_dict(ckpt.ip_adapter)
    if ckpt.image_embed_dim != request.param:
        ckpt, state = _widened(ckpt, state, request.param)
    assert ckpt.image_embed_dim == request.param
    folder = tmp_path_factory.mktemp(f"conditioner_d{request.param}")
    out = {}
    for name, target in (("fp32", Target.TRT), ("fp64", Target.ONNX)):
        # max_batch 32: N in [1, 64], so thousands of rows run in few calls; it changes no arithmetic
        options = ExportOptions(target=target, max_batch=32)
        spec = image_conditioner.spec(ckpt, options)
        module = image_conditioner.build_module(ckpt, state, options)
        path = folder / f"image_conditioner_{target.value}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings of the TorchScript exporter
            exporter.export_onnx(module, spec, exporter._dims(spec, export=True), path, options.opset)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
        out[name] = _Graph(spec, module, session)
        out[name + "_path"] = path
    return out


def _sse(values: np.ndarray, upper: np.ndarray) -> float:
    return sum(float(np.sum((part - part.mean()) ** 2)) for part in (values[upper], values[~upper]) if part.size)


def _unexplained(p: np.ndarray, got: np.ndarray, ref: np.ndarray, mode, theta: float, eps: float) -> list[str]:
    """Rows where ``got`` differs from the definition ``ref`` by more than rounding at ``eps`` explains."""
    from maskst.masking import MaskMode, torch_quantile

    problems = []
    d = p.shape[-1]
    for row in np.flatnonzero((got != ref).any(axis=1)):
        v = p[row]
        if mode is MaskMode.KMEANS:
            centred = v - v.mean()
            sst = float(centred @ centred)
            excess = _sse(v, got[row]) - _sse(v, ref[row])
            if excess > 8 * np.sqrt(d) * eps * sst:
                problems.append(f"row {row}: within-cluster SSE {excess / (eps * sst):.3g} eps*SST above the optimum "
                                f"(bound {8 * np.sqrt(d):.3g})")
        else:
            q = torch_quantile(v, theta)
            distance = float(np.abs(v[got[row] != ref[row]] - q).max())
            if distance > 8 * eps * float(np.abs(v).max()):
                problems.append(f"row {row}: an element {distance:.3g} from the quantile {q:.6g} flipped "
                                f"(bound {8 * eps * float(np.abs(v).max()):.3g})")
    return problems


def _check_tokens(graph: _Graph, tokens: np.ndarray, expected: np.ndarray, what: str) -> None:
    spec = graph.spec
    error = np.abs(tokens - expected)
    allowed = spec.atol + spec.rtol * np.abs(expected)
    assert np.all(error <= allowed), f"{what}: ip_tokens max abs error {error.max():.3g} (atol {spec.atol}, rtol {spec.rtol})"


# --------------------------------------------------------------------------- the float32 graph itself


def test_fp32_graph_has_no_float64_and_matches_its_torch_module(graphs):
    """TensorRT has no float64: no tensor, constant, cast or initializer of the float32 graph may be
    double. The float64 graph has them (so the check can fail), and the same operators."""
    import onnx
    from onnx import TensorProto

    from maskst.export import exporter, image_conditioner

    def dtypes(path):
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
        graph = model.graph
        found = Counter(v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info])
        found.update(t.data_type for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to":
                    found[attr.i] += 1
                if attr.type == onnx.AttributeProto.TENSOR:
                    found[attr.t.data_type] += 1
        typed = {v.name for v in graph.value_info} | {v.name for v in [*graph.input, *graph.output]}
        untyped = [o for node in graph.node for o in node.output if o not in typed]
        assert not untyped, f"{path.name}: no inferred type for {untyped[:5]}"  # every tensor was seen
        return found, Counter(node.op_type for node in graph.node)

    fp32_types, fp32_ops = dtypes(graphs["fp32_path"])
    fp64_types, fp64_ops = dtypes(graphs["fp64_path"])
    assert TensorProto.DOUBLE not in fp32_types, fp32_types
    assert fp64_types[TensorProto.DOUBLE] > 10
    assert fp32_ops == fp64_ops  # the same computation, only the split's dtype differs
    assert {"TopK", "CumSum", "ArgMax", "GatherElements"} <= set(fp32_ops)  # the split is in the graph

    # the exporter's own parity check (every method x mask mode + a zero embedding) on the float32 graph
    graph = graphs["fp32"]
    feeds = image_conditioner.parity_feeds(graph.spec, exporter._dims(graph.spec, export=False))
    records = exporter.check_graph_parity(graph.module, graph.spec, graphs["fp32_path"], feeds)
    assert len(records) == 2 * len(feeds) and all(r.passed for r in records), [r.describe() for r in records if not r.passed]


# --------------------------------------------------------------------------- masks against the definition


@pytest.mark.parametrize("mode_name", ["kmeans", "quantile"])
def test_fp32_masks_follow_the_numpy_definition(graphs, mode_name):
    from maskst.masking import MaskMode, Method, content_mask, content_product

    mode = MaskMode(mode_name)
    d = graphs["fp32"].spec.inputs[0].shape[1]
    rows = 2048 if mode is MaskMode.KMEANS else 512  # per family (and per theta for quantile)
    thetas = (0.7,) if mode is MaskMode.KMEANS else THETAS
    rng = np.random.default_rng(1000 + d + mode.index)
    summary, checked, masked = [], 0, 0
    for kind in KINDS:
        for theta in thetas:
            e_i, e_c = _embeddings(kind, rows, d, rng)
            ref = content_mask(e_i, e_c, mode=mode, theta=theta)
            p = content_product(e_i, e_c)
            tokens32, mask32 = graphs["fp32"].run(e_i, e_c, Method.MASKST, mode, theta)
            tokens64, mask64 = graphs["fp64"].run(e_i, e_c, Method.MASKST, mode, theta)
            case = f"D={d} {mode.value} theta={theta} {kind}"

            # the float64 graph: bit-equal to numpy, except within float64 rounding on near-ties
            if kind == "near-ties":
                assert not _unexplained(p, mask64, ref, mode, theta, EPS64), case
            else:
                np.testing.assert_array_equal(mask64, ref, err_msg=case)

            # the float32 graph: every difference explained by float32 rounding, and rare
            assert not (problems := _unexplained(p, mask32, ref, mode, theta, EPS32)), f"{case}: {problems[:5]}"
            differing = (mask32 != ref).any(axis=1)
            summary.append(f"{case}: {int(differing.sum())}/{rows} rows differ")
            if not (kind == "near-ties" and mode is MaskMode.QUANTILE):
                assert differing.mean() <= MAX_DIFFERING_ROWS, summary[-1]

            # ip_tokens: as the float64 graph's where the masks agree, else the projection of the own mask
            same = ~(mask32 != mask64).any(axis=1)
            _check_tokens(graphs["fp32"], tokens32[same], tokens64[same], case)
            if (~same).any():
                expected = graphs["fp32"].project(e_i[~same] * ~mask32[~same])
                _check_tokens(graphs["fp32"], tokens32[~same], expected, case + " (rows with a flipped tie)")
            checked += rows
            masked += int(ref.any(axis=1).sum())
    # not vacuous: thousands of rows, most of which mask something (quantile theta=1 masks nothing)
    assert checked >= 10_000 and masked >= 0.75 * checked, (checked, masked)
    print("\n".join(summary))


@pytest.mark.parametrize("method_name", ["ip-adapter", "instantstyle"])
def test_methods_without_a_mask(graphs, method_name):
    """Every method x mask mode: ip-adapter and instantstyle mask nothing, and their tokens are the
    float64 graph's and the projection of e_i (ip-adapter) or e_i - s * e_c (instantstyle)."""
    from maskst.masking import MaskMode, Method

    method = Method(method_name)
    d = graphs["fp32"].spec.inputs[0].shape[1]
    rng = np.random.default_rng(7 + d)
    e_i, e_c = zip(*(_embeddings(kind, 128, d, rng) for kind in KINDS))
    e_i, e_c = np.concatenate(e_i), np.concatenate(e_c)
    for mode in MaskMode:
        for scale in (0.5, 1.0):
            tokens32, mask32 = graphs["fp32"].run(e_i, e_c, method, mode, 0.3, scale)
            tokens64, _ = graphs["fp64"].run(e_i, e_c, method, mode, 0.3, scale)
            assert not mask32.any()
            _check_tokens(graphs["fp32"], tokens32, tokens64, f"{method.value} {mode.value}")
            e_hat = e_i - np.float32(scale) * e_c if method is Method.INSTANTSTYLE else e_i
            _check_tokens(graphs["fp32"], tokens32, graphs["fp32"].project(e_hat), f"{method.value} {mode.value}")


def test_degenerate_rows_mask_nothing(graphs):
    """Zero image or content embeddings and constant products: nothing masked, finite tokens, as in
    numpy and the float64 graph (the 'distinct' test must work in float32 as well)."""
    from maskst.masking import DegenerateMaskWarning, MaskMode, Method, content_mask

    d = graphs["fp32"].spec.inputs[0].shape[1]
    rng = np.random.default_rng(3)
    e = rng.standard_normal(d).astype(np.float32)
    ones = np.ones(d, np.float32)
    e_i = np.stack([np.zeros(d, np.float32), e, ones, 3.5 * ones, -ones])
    e_c = np.stack([e, np.zeros(d, np.float32), ones, 0.25 * ones, ones])
    for mode in MaskMode:
        for theta in THETAS:
            with pytest.warns(DegenerateMaskWarning):
                assert not content_mask(e_i, e_c, mode=mode, theta=theta).any()
            tokens32, mask32 = graphs["fp32"].run(e_i, e_c, Method.MASKST, mode, theta)
            tokens64, _ = graphs["fp64"].run(e_i, e_c, Method.MASKST, mode, theta)
            assert not mask32.any() and np.all(np.isfinite(tokens32)), (mode, theta)
            _check_tokens(graphs["fp32"], tokens32, tokens64, f"degenerate {mode.value} theta={theta}")
