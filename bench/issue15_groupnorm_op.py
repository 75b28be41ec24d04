"""Issue 15 (thirteenth session, 2026-12-03): would one GroupNormalization op per GroupNorm compile better?

The ONNX export (opset 17, no GroupNormalization op there) writes SD's GroupNorm as Reshape [N, G, -1] ->
InstanceNormalization (scale 1, bias 0) -> Reshape back -> Mul gamma -> Add beta, which OpenVINO reads as
Reshape -> MVN -> Multiply / Add -> Reshape -> Multiply / Add. This script folds every such chain of a graph
(reshaped to static shapes, the runner's rewrites applied) into one ``GroupNormalization`` (opset 12), compiles the
graph without and with the fold, and prints what the CPU plugin made of each: runtime node types and kernels, and
the largest output difference on one random feed. No timing: the question is whether the runtime graph changes.

    python bench/issue15_groupnorm_op.py MODEL.xml|onnx [OUT.json]    # default: the full-size bench int8 UNet

Answer on OpenVINO 2026.4.1 (Zen 4; bench/results/unet-int8-zen4-session13-groupnorm-op.json): all 61 GroupNorms
fold, and the compiled graphs run the same kernels, constants aside: the CPU plugin decomposes GroupNormalization
back into MVN, so both have the same 109 MVN nodes (61 GroupNorms, 48 LayerNorms) and 364 Snippets subgraphs. The
outputs differ (largest 0.1 against a peak of 1.17 on the int8 UNet in bf16: the order of the arithmetic changed
and the int8 activations' rounding amplifies it; not examined further). Nothing to gain; not adopted.
"""
import json
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset12 as ops

from maskst.bench.ov_inspect import compile_config, random_feed, read_reshaped, runtime_summary

MODEL = Path.home() / ".cache/maskst/bench-full-0.1.0/engines/unet.int8.xml"
SHAPES = {"sample": [2, 4, 32, 32], "timestep": [1], "text_embeddings": [2, 77, 768], "ip_tokens": [2, 1, 4, 768],
          "ip_scale": [16, 1], "region_mask_1": [1, 32, 32], "region_mask_2": [1, 16, 16],
          "region_mask_4": [1, 8, 8], "region_mask_8": [1, 4, 4]}


def consumer(output):
    """The one consumer of ``output`` that reads its values (ShapeOf reads only the shape), else None."""
    readers = [i.get_node() for i in output.get_target_inputs() if i.get_node().get_type_name() != "ShapeOf"]
    return readers[0] if len(readers) == 1 else None


def constant(value):
    """The data of a Constant, or of a Reshape of one (in the Reshape's static output shape); else None."""
    node = value.get_node()
    if node.get_type_name() == "Reshape" and node.get_output_partial_shape(0).is_static:
        data = constant(node.input_value(0))
        return None if data is None else data.reshape(list(node.get_output_partial_shape(0).to_shape()))
    return node.get_data() if node.get_type_name() == "Constant" else None


def other(op, node):
    return next(v for v in op.input_values() if v.get_node() is not node)


def fold_group_norms(model) -> int:
    """Replace each GroupNorm chain of ``model`` in place by GroupNormalization; how many were folded."""
    folded = 0
    for mvn in model.get_ordered_ops():
        attrs = mvn.get_attributes() if mvn.get_type_name() == "MVN" else {}
        grouped = mvn.input_value(0).get_node() if attrs else None
        if not attrs.get("normalize_variance") or attrs.get("eps_mode", "").upper() != "INSIDE_SQRT" \
                or grouped.get_type_name() != "Reshape":
            continue
        x = grouped.input_value(0)
        if not (x.get_partial_shape().is_static and grouped.get_output_partial_shape(0).is_static):
            continue
        x_shape, g_shape = list(x.get_partial_shape().to_shape()), list(grouped.get_output_partial_shape(0).to_shape())
        axes = constant(mvn.input_value(1))
        if len(g_shape) != 3 or len(x_shape) < 3 or g_shape[0] != x_shape[0] or x_shape[1] % g_shape[1] \
                or axes is None or sorted(int(a) % 3 for a in axes.reshape(-1)) != [2]:
            continue
        node, step = mvn, consumer(mvn.output(0))
        for kind, neutral in (("Multiply", 1), ("Add", 0)):  # InstanceNormalization's own scale 1 and bias 0
            if step is not None and step.get_type_name() == kind:
                value = constant(other(step, node))
                if value is None or not np.all(value == neutral):
                    step = None
                    break
                node, step = step, consumer(step.output(0))
        if step is None or step.get_type_name() != "Reshape" or \
                list(step.get_output_partial_shape(0).to_shape()) != x_shape:
            continue
        scale = consumer(step.output(0))
        shift = consumer(scale.output(0)) if scale is not None and scale.get_type_name() == "Multiply" else None
        if shift is None or shift.get_type_name() != "Add":
            continue
        gamma, beta, channels = constant(other(scale, step)), constant(other(shift, scale)), x_shape[1]
        if gamma is None or beta is None or gamma.size != channels or beta.size != channels:
            continue
        norm = ops.group_normalization(x, ops.constant(gamma.reshape(channels).astype(np.float32)),
                                       ops.constant(beta.reshape(channels).astype(np.float32)),
                                       num_groups=g_shape[1], epsilon=float(attrs["eps"]))
        shift.output(0).replace(norm.output(0))
        folded += 1
    return folded


def main(path: Path, out: Path | None) -> None:
    core = ov.Core()
    results, outputs = {}, {}
    for label in ("as exported", "GroupNormalization"):
        model = read_reshaped(core, path, SHAPES)
        folded = fold_group_norms(model) if label == "GroupNormalization" else 0
        source = {n.get_type_name() for n in model.get_ordered_ops()}
        compiled = core.compile_model(model, "CPU", compile_config("bf16", 2))
        summary = runtime_summary(compiled)
        outputs[label] = compiled.create_infer_request().infer(random_feed(model))[compiled.output(0)].copy()
        results[label] = {"folded": folded, "GroupNormalization_in_source": "GroupNormalization" in source,
                          "MVN_in_source": sum(n.get_type_name() == "MVN" for n in model.get_ordered_ops()),
                          **summary}
        print(f"{label}: folded {folded}; runtime {summary['layer_types']}")
    # constants aside (the fold adds its gamma / beta and the decomposition's own), the same kernels?
    kernels = {label: {k: v for k, v in r["kernels"].items() if not k.startswith("Const")}
               for label, r in results.items()}
    same = kernels["as exported"] == kernels["GroupNormalization"]
    diff = float(np.max(np.abs(outputs["as exported"] - outputs["GroupNormalization"])))
    print(f"runtime kernels identical (constants aside): {same}; largest output difference {diff:.3g} "
          f"(output peak {float(np.max(np.abs(outputs['as exported']))):.3g})")
    if out is not None:
        out.write_text(json.dumps({"command": " ".join(sys.argv), "openvino": ov.__version__, "model": str(path),
                                   "shapes": SHAPES, "results": results, "runtime_kernels_identical_constants_aside": same,
                                   "max_abs_output_difference": diff}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else MODEL, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
