"""Issue 15 (sixth session of 2026-12-02): should the attention MatMuls stay out of int8? One diffusers-like
attention block quantized by NNCF (FULL scheme, model type TRANSFORMER) with and without the two activation x
activation MatMuls (QK^T, PV) in the ignored scope; compiled bf16, 2 threads; calls alternated in one process.

    python bench/issue15_attention_int8.py D HEADS TOKENS KEY_TOKENS PAIRS
    python bench/issue15_attention_int8.py 320 8 1024 1024 40     # the 32x32-level self-attention at 256 px

Prints the runtime node types of both, their error against f32, and the paired median difference (docs/benchmarks-history.md,
"The same Zen 4 kind, a day later")."""
import sys, time, json
import numpy as np, torch, openvino as ov, nncf
import os
import tempfile
ONNX_PATH = os.path.join(tempfile.mkdtemp(prefix='attn-int8-'), 'attention.onnx')
import torch.nn.functional as F

D, H, T, B = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), 2
KV = int(sys.argv[4]) if len(sys.argv) > 4 else T   # key tokens (77 = text cross-attention)

class Attn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(D, D, bias=False); self.k = torch.nn.Linear(D, D, bias=False)
        self.v = torch.nn.Linear(D, D, bias=False); self.o = torch.nn.Linear(D, D)
    def forward(self, x, c):
        q, k, v = self.q(x), self.k(c), self.v(c)
        sh = lambda t: t.view(B, -1, H, D // H).transpose(1, 2)
        a = F.scaled_dot_product_attention(sh(q), sh(k), sh(v))
        return self.o(a.transpose(1, 2).reshape(B, -1, D))

torch.manual_seed(0)
m = Attn().eval()
x = torch.randn(B, T, D); c = torch.randn(B, KV, D) if KV != T else x
if KV == T:
    class Self(torch.nn.Module):
        def __init__(s): super().__init__(); s.m = m
        def forward(s, x): return s.m(x, x)
    mod, args, names = Self().eval(), (x,), ["x"]
else:
    mod, args, names = m, (x, c), ["x", "c"]
torch.onnx.export(mod, args, ONNX_PATH, input_names=names, opset_version=17, dynamo=False)
core = ov.Core()
model = core.read_model(ONNX_PATH)
def act_matmuls(model):
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul": continue
        src = op.input_value(1).get_node()
        while src.get_type_name() in ("Convert", "Transpose", "Reshape"): src = src.input_value(0).get_node()
        if src.get_type_name() != "Constant": out.append(op.get_friendly_name())
    return out
acts = act_matmuls(model)
print("activation matmuls", acts)
rng = np.random.default_rng(0)
calib = [{n: rng.standard_normal(a.shape).astype(np.float32) for n, a in zip(names, args)} for _ in range(8)]
full = nncf.quantize(model, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=8)
model2 = core.read_model(ONNX_PATH)
noatt = nncf.quantize(model2, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=8,
                      ignored_scope=nncf.IgnoredScope(names=acts, validate=False))
cfg = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1}
cm = {k: core.compile_model(v, "CPU", cfg) for k, v in (("full", full), ("attn_bf16", noatt))}
reqs = {k: v.create_infer_request() for k, v in cm.items()}
for k, r in reqs.items():
    for _ in range(3): r.infer(calib[0])
    types = {}
    for node in v.get_runtime_model().get_ordered_ops() if (v := cm[k]) else []:
        rt = node.get_rt_info()
        t = f"{rt['layerType'].astype(str)}:{rt['runtimePrecision'].astype(str)}"
        types[t] = types.get(t, 0) + 1
    print(k, {t: n for t, n in types.items() if not t.startswith(("Const", "Reshape", "Input", "Output"))})
ref = np.array(reqs["full"].infer(calib[0])[0]); alt = np.array(reqs["attn_bf16"].infer(calib[0])[0])
fp = ov.Core().compile_model(core.read_model(ONNX_PATH), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
f32 = np.array(fp.create_infer_request().infer(calib[0])[0])
print("err vs f32 (max/peak): full", np.abs(ref - f32).max() / np.abs(f32).max(), "attn_bf16", np.abs(alt - f32).max() / np.abs(f32).max())
diffs, ta, tb = [], [], []
for i in range(int(sys.argv[5]) if len(sys.argv) > 5 else 40):
    order = ("full", "attn_bf16") if i % 2 == 0 else ("attn_bf16", "full")
    t = {}
    for k in order:
        s = time.perf_counter(); reqs[k].infer(calib[i % 8]); t[k] = (time.perf_counter() - s) * 1e3
    ta.append(t["full"]); tb.append(t["attn_bf16"]); diffs.append(t["attn_bf16"] - t["full"])
gflop = 2 * B * T * D * D * 2 + 2 * B * KV * D * D * 2 + 2 * 2 * B * H * T * KV * (D // H)
print(json.dumps({"D": D, "H": H, "T": T, "KV": KV, "full_ms": float(np.median(ta)), "attn_bf16_ms": float(np.median(tb)),
                  "paired_diff_ms": float(np.median(diffs)), "gflop": gflop / 1e9}))
