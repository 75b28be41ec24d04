"""Issue 15 (eighth session of 2026-12-02): the int8 UNet runner called with input arrays fresh every call (as the
pipeline's numpy scheduler makes them) vs the same array objects every call. Blocks of 4 alternated, the first call of
each block dropped; the feed is one UNet call of a real generation.

    python bench/issue15_fresh_inputs.py        # needs the full-size bench engines in ~/.cache/maskst"""
import statistics, time
from pathlib import Path
import numpy as np
from maskst.bench.bench import BenchSettings, _inputs, clear_request_caches
from maskst.runtime.pipeline import MaskstPipeline, PipelineCallback
E = Path.home() / ".cache/maskst/bench-full-0.1.0/engines"
class Keep(PipelineCallback):
    feeds = []
    def on_infer_inputs(self, graph, feed):
        if graph == "unet": self.feeds.append({k: v.copy() for k, v in feed.items()})
settings = BenchSettings(height=256, width=256, steps=10)
pipe = MaskstPipeline(E, backend="openvino-int8", verify_hashes=False)
config, images, latents = _inputs(settings, pipe.latent_channels, pipe.vae_scale_factor, deepcache_interval=1)
keep = Keep(); pipe.add_callback(keep)
with pipe:
    clear_request_caches(pipe); pipe.generate(config, images, latents)
    same = keep.feeds[-6]
    runner = pipe.runners["unet"]
    t = {"fresh": [], "same": []}
    for block in range(20):
        for name in (("fresh", "same") if block % 2 == 0 else ("same", "fresh")):
            for j in range(4):
                f = {k: v.copy() for k, v in same.items()} if name == "fresh" else same
                s = time.perf_counter(); runner.infer(f); e = (time.perf_counter() - s) * 1e3
                if j: t[name].append(e)
    print({k: (round(statistics.median(v), 1), len(v)) for k, v in t.items()})
    print({k: [round(x) for x in v] for k, v in t.items()})
