"""Issue 15 (eighth session of 2026-12-02): does what the pipeline feeds the int8 UNet between calls change its speed?
The feeds are the 11 UNet calls of a real generation; blocks of 4 calls alternated, the first call of each block dropped.

    python bench/issue15_unet_feeds.py cycled   # one fixed feed vs the 11 feeds cycled (zero-copy infer request)
    python bench/issue15_unet_feeds.py fresh    # the runner with the same arrays vs fresh copies every call
                                                # (as the pipeline's numpy scheduler makes them)
Needs the full-size bench engines in ~/.cache/maskst."""
import statistics, sys, time
from pathlib import Path
import numpy as np
from maskst.bench.bench import BenchSettings, request_inputs, clear_request_caches
from maskst.runtime.pipeline import MaskstPipeline, PipelineCallback
E = Path.home() / ".cache/maskst/bench-full-0.1.0/engines"
mode = sys.argv[1] if len(sys.argv) > 1 else "cycled"
if mode not in ("cycled", "fresh"):
    sys.exit(f"mode {mode!r}: choose cycled or fresh")
class Keep(PipelineCallback):
    feeds = []
    def on_infer_inputs(self, graph, feed):
        if graph == "unet": self.feeds.append({k: v.copy() for k, v in feed.items()})
settings = BenchSettings(height=256, width=256, steps=10)
pipe = MaskstPipeline(E, backend="openvino-int8", verify_hashes=False)
config, images, latents = request_inputs(settings, pipe.latent_channels, pipe.vae_scale_factor, deepcache_interval=1)
keep = Keep(); pipe.add_callback(keep)
with pipe:
    clear_request_caches(pipe); pipe.generate(config, images, latents)
    feeds = keep.feeds[-11:]
    runner = pipe.runners["unet"]
    if mode == "cycled":
        (_, request, _, _), = runner._compiled.values()
        def call(f):
            request.infer({k: np.ascontiguousarray(v) for k, v in f.items()}, share_inputs=True, share_outputs=True)
        arms = {"one fixed feed": lambda n: feeds[3], "11 feeds cycled": lambda n: feeds[n % 11]}
        blocks = 16
    else:
        call, same = runner.infer, feeds[5]
        arms = {"fresh": lambda n: {k: v.copy() for k, v in same.items()}, "same": lambda n: same}
        blocks = 20
    t = {name: [] for name in arms}
    n = 0
    for block in range(blocks):
        for name in (list(arms) if block % 2 == 0 else list(arms)[::-1]):
            for j in range(4):
                f = arms[name](n); n += 1
                s = time.perf_counter(); call(f); e = (time.perf_counter() - s) * 1e3
                if j: t[name].append(e)
    print({k: (round(statistics.median(v), 1), len(v)) for k, v in t.items()})
