"""Issue 15 (eighth session of 2026-12-02): the int8 UNet's infer request (zero-copy inputs, as the runner calls it)
with one fixed feed every call vs the 11 feeds of a real generation cycled (other timesteps, latents and arrays).
Blocks of 4 calls alternated, the first call of each block dropped.

    python bench/issue15_generation_feeds.py        # needs the full-size bench engines in ~/.cache/maskst"""
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
    feeds = keep.feeds[-11:]
    (_, request, _, _), = pipe.runners["unet"]._compiled.values()
    def zero_copy(f):
        request.infer({k: np.ascontiguousarray(v) for k, v in f.items()}, share_inputs=True, share_outputs=True)
    pickers = {"one fixed feed": lambda n: feeds[3], "11 feeds cycled": lambda n: feeds[n % 11]}
    t = {name: [] for name in pickers}
    n = 0
    for block in range(16):
        for name in (list(pickers) if block % 2 == 0 else list(pickers)[::-1]):
            for j in range(4):
                f = pickers[name](n); n += 1
                s = time.perf_counter(); zero_copy(f); e = (time.perf_counter() - s) * 1e3
                if j: t[name].append(e)
    print({k: (round(statistics.median(v), 1), len(v)) for k, v in t.items()})
