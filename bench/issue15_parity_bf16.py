"""Issue 15: every graph of the full-size engines on OpenVINO bf16 (f16 weights) against ONNX Runtime fp32
(maskst.runtime.openvino_runner.parity_vs_ort; UNet / VAE at 32x32 latents). Writes /tmp/cpu/parity_bf16.json.

    python bench/issue15_parity_bf16.py
"""
import json
from pathlib import Path
from maskst.engines.manifest import load_manifest
from maskst.runtime.openvino_runner import parity_vs_ort
m = load_manifest(Path.home() / ".cache/maskst/bench-full-0.1.0/engines", verify_hashes=False)
out = {}
for name in m.data["graphs"]:
    dims = {"unet": {"N": 1, "h": 32, "w": 32, "R": 1}, "vae_decoder": {"N": 1, "h": 32, "w": 32}}.get(name)
    recs = parity_vs_ort(m, name, "bf16", dims=dims)
    out[name] = [r.describe() for r in recs]
    print(name, out[name], flush=True)
json.dump(out, open("/tmp/cpu/parity_bf16.json", "w"), indent=1)
