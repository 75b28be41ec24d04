"""Issue 15 (eighth session of 2026-12-02): the int8 UNet as the pipeline runs it (OpenVinoRunner: blob import, pages
released) against a bare compile of the same IR, calls alternated in one process, minor page faults per call.

    python bench/issue15_runner_vs_bare.py CALLS        # e.g. 12; needs the full-size bench engines in ~/.cache/maskst"""
import statistics, sys, time
from pathlib import Path
import openvino as ov
from maskst.bench.ov_inspect import read_reshaped, compile_config, random_feed
from maskst.engines.manifest import load_manifest
from maskst.runtime.backends import parse_backend, RunnerOptions
E = Path.home() / ".cache/maskst/bench-full-0.1.0/engines"
shapes = {"sample":[2,4,32,32],"timestep":[1],"text_embeddings":[2,77,768],"ip_tokens":[2,1,4,768],"ip_scale":[16,1],
          "region_mask_1":[1,32,32],"region_mask_2":[1,16,16],"region_mask_4":[1,8,8],"region_mask_8":[1,4,4]}
calls = int(sys.argv[1])
core = ov.Core()
m = read_reshaped(core, E / "unet.int8.xml", shapes)
feed = random_feed(m)
bare = core.compile_model(m, "CPU", compile_config("bf16", 2)).create_infer_request()
del m
manifest = load_manifest(E, verify_hashes=False)
runner = parse_backend("openvino-int8").runner(manifest, "unet", RunnerOptions(threads=2))
runner.activate()
names = {t.name for t in runner.spec.inputs}
rfeed = {k: v for k, v in feed.items() if k in names}
print("feed diff", set(feed) ^ names)
for _ in range(2): bare.infer(feed); runner.infer(rfeed)
print("runner loaded from", runner.loaded_from)
import resource
flt = [[], []]
times = [[], []]
for i in range(calls):
    for k in ((0, 1) if i % 2 == 0 else (1, 0)):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        bare.infer(feed) if k == 0 else runner.infer(rfeed)
        times[k].append((time.perf_counter() - t) * 1e3); flt[k].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
d = [b - a for a, b in zip(*times)]
print("bare", round(statistics.median(times[0]),1), "runner", round(statistics.median(times[1]),1),
      "paired diff median", round(statistics.median(d),1), [round(x) for x in d])
print('minor faults per call bare', flt[0], 'runner', flt[1])
