"""Issue 15 (thirteenth session, 2026-12-03): ort-cpu's cold start without and with its optimized-graph cache.

Each case is a fresh process: import, open the engines with ``ort-cpu`` (every session made), one 1-step request
up to the end of its UNet step (the bench's cold start, ``maskst.bench.bench._run_cold_start``), peak RSS. Cases:
``off`` (``compile_cache=False``: every graph optimized at load, as before the cache), ``store`` (an empty cache:
optimized and written), ``cached`` (loaded from what ``store`` wrote).

    python bench/issue15_ort_cold_start.py [ENGINES] [OUT.json]   # default: the full-size bench engines
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ENGINES = Path.home() / ".cache/maskst/bench-full-0.1.0/engines"
CASE = r"""
import json, sys, time
spawned = float(sys.argv[3])
t_import = time.time()
from pathlib import Path
from maskst.bench.bench import BenchSettings, peak_rss_mib, request_inputs
from maskst.runtime.pipeline import MaskstPipeline
cache = False if sys.argv[2] == "off" else Path(sys.argv[2])
settings = BenchSettings(height=256, width=256, steps=1, threads=2)
t_load = time.time()
pipeline = MaskstPipeline(Path(sys.argv[1]), backend="ort-cpu", verify_hashes=False, threads=2, compile_cache=cache)
config, images, latents = request_inputs(settings, pipeline.latent_channels, pipeline.vae_scale_factor)
first = []
with pipeline:
    t_active = time.time()
    sources = {name: runner.loaded_from for name, runner in pipeline.runners.items()}
    pipeline.generate(settings.config(steps=1), images, latents, progress=lambda s, t: first or first.append(time.time()))
print(json.dumps({"cold_start_ms": (first[0] - spawned) * 1e3, "import_ms": (t_load - t_import) * 1e3,
                  "sessions_ms": (t_active - t_load) * 1e3, "peak_rss_mib": peak_rss_mib(), "sessions": sources}))
"""


def run_case(engines: Path, cache: str) -> dict:
    import time

    done = subprocess.run([sys.executable, "-c", CASE, str(engines), cache, repr(time.time())], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(engines: Path, out: Path | None) -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="ort-cache-") as cache:
        for case in ("off", "store", "cached"):
            results[case] = run_case(engines, "off" if case == "off" else cache)
            r = results[case]
            print(f"{case}: cold start {r['cold_start_ms']:,.0f} ms (sessions {r['sessions_ms']:,.0f} ms), "
                  f"peak RSS {r['peak_rss_mib']:,.0f} MiB, sessions from {sorted(set(r['sessions'].values()))}")
    if out is not None:
        out.write_text(json.dumps({"command": " ".join(sys.argv), "engines": str(engines), "results": results},
                                  indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ENGINES, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
