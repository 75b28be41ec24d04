"""Issue 15 (eleventh session, 2026-12-03): is the UNet slower inside a generation than called back to back?

One process, one pipeline (the backend's runners, 2 threads): a warm-up generation, then per round one timed
generation (every UNet call timed by the bench's own GraphCallTimer) followed by 11 calls of the same UNet runner,
back to back, on the last feed the generation gave it.

    python bench/issue15_generation_vs_back_to_back.py [BACKEND] [ROUNDS]    # default openvino-int8 4;
                                                                            # needs the full-size bench engines"""
import statistics
import sys
import time
from pathlib import Path

from maskst.bench.bench import BenchSettings, GraphCallTimer, request_inputs
from maskst.runtime.pipeline import MaskstPipeline, PipelineCallback

ENGINES = Path.home() / ".cache/maskst/bench-full-0.1.0/engines"


class LastUnetFeed(PipelineCallback):
    """Keeps a copy of the last feed of the plain UNet."""

    feed = None

    def on_infer_inputs(self, graph, feed):
        if graph == "unet":
            self.feed = {name: value.copy() for name, value in feed.items()}


def main(backend: str, rounds: int) -> None:
    pipeline = MaskstPipeline(ENGINES, backend=backend, verify_hashes=False, threads=2)
    config, images, latents = request_inputs(BenchSettings(), pipeline.latent_channels, pipeline.vae_scale_factor)
    in_generation: list[float] = []
    pipeline.add_callback(GraphCallTimer("unet", in_generation))
    last = LastUnetFeed()
    pipeline.add_callback(last)
    with pipeline:
        pipeline.generate(config, images, latents)
        runner = pipeline.runners["unet"]
        for r in range(rounds):
            in_generation.clear()
            started = time.perf_counter()
            pipeline.generate(config, images, latents)
            end_to_end = (time.perf_counter() - started) * 1e3
            back_to_back = []
            for _ in range(len(in_generation)):
                started = time.perf_counter()
                runner.infer(last.feed)
                back_to_back.append((time.perf_counter() - started) * 1e3)
            print(f"round {r}: end to end {end_to_end:.0f} ms; UNet in the generation: median "
                  f"{statistics.median(in_generation):.1f} {[round(x) for x in in_generation]}")
            print(f"         back to back: median {statistics.median(back_to_back):.1f} "
                  f"{[round(x) for x in back_to_back]}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "openvino-int8", int(sys.argv[2]) if len(sys.argv) > 2 else 4)
