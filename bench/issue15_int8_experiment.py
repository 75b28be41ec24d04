"""Experiment (issue 15): NNCF's hybrid int8 scheme on the full-size UNet / VAE decoder, error and speed vs bf16.

The scheme optimum-intel uses for diffusion UNets: int8 weight-only compression of the MatMul weights
(``nncf.compress_weights`` INT8_ASYM, convolutions left out), then ``nncf.quantize`` (activations and
weights, model type TRANSFORMER, SmoothQuant off for MatMuls) with those MatMuls ignored, i.e. int8
convolutions. Calibration: the graph's inputs recorded from real generations of the ``openvino``
pipeline (4 prompts x 11 UNet calls; the VAE: 12 final latents), every other one used for
calibration, the rest held out for the error against ONNX Runtime fp32. Needs ``pip install nncf`` and
the full-size random models (``maskst-bench --random-full-size`` builds them).

    python bench/issue15_int8_experiment.py collect unet     # UNet feeds -> /tmp/cpu/int8/calib_unet.pkl
    python bench/issue15_int8_experiment.py quantize unet    # -> /tmp/cpu/int8/unet_int8.xml
    python bench/issue15_int8_experiment.py eval unet        # error and alternated timings vs bf16 -> eval_unet.json

This is a measurement, not a maskst path: nothing in maskst loads the int8 IR.
"""
import sys, time, json, pickle, gc
from pathlib import Path
import numpy as np

stage = sys.argv[1]
E = Path.home() / ".cache/maskst/bench-full-0.1.0/engines"
OUT = Path("/tmp/cpu/int8"); OUT.mkdir(exist_ok=True)

if stage == "collect":
    # UNet feeds of real generations (OpenVINO bf16 pipeline), several prompts / seeds
    from maskst.runtime.pipeline import MaskstPipeline, PipelineCallback
    from maskst.generation import GenerationConfig, DEMO_STYLE
    graph = sys.argv[2]
    class Grab(PipelineCallback):
        def __init__(self): self.feeds = []
        def on_infer_inputs(self, g, feed):
            if g == graph: self.feeds.append({k: np.array(v, copy=True) for k, v in feed.items()})
    grab = Grab()
    prompts = ["a photo of a cat", "a watercolor landscape with mountains", "portrait of an old man", "a city street at night"]
    with MaskstPipeline(E, backend="openvino", verify_hashes=False, callbacks=[grab]) as p:
        for i, prompt in enumerate(prompts * (3 if graph == "vae_decoder" else 1)):
            cfg = GenerationConfig.create(prompt=prompt, style=(DEMO_STYLE,), content="a house", steps=10, height=256, width=256, seed=i)
            p.generate(cfg)
    pickle.dump(grab.feeds, open(OUT / f"calib_{graph}.pkl", "wb"))
    print(len(grab.feeds), "feeds")

elif stage == "quantize":
    import openvino as ov, nncf
    graph = sys.argv[2]
    feeds = pickle.load(open(OUT / f"calib_{graph}.pkl", "rb"))
    calib, held = feeds[::2], feeds[1::2]
    core = ov.Core()
    m = core.read_model(str(E / f"{graph}.onnx"))
    m.reshape({k: list(v.shape) for k, v in feeds[0].items()})
    t = time.time()
    # weight-only int8 on MatMul / Gather weights; convolutions left for full quantization
    from nncf.parameters import CompressWeightsMode
    matmuls = [op.get_friendly_name() for op in m.get_ordered_ops()
               if op.get_type_name() == "MatMul" and any(op.input_value(i).get_node().get_type_name() in ("Constant", "Convert", "Transpose") for i in (1,))]
    cm = nncf.compress_weights(m, mode=CompressWeightsMode.INT8_ASYM, ignored_scope=nncf.IgnoredScope(types=["Convolution"], validate=False))
    print("compressed", time.time() - t, len(matmuls), "weight matmuls")
    q = nncf.quantize(cm, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib),
                      ignored_scope=nncf.IgnoredScope(names=matmuls, validate=False),
                      advanced_parameters=nncf.AdvancedQuantizationParameters(
                          smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)))
    print("quantized", time.time() - t)
    ov.save_model(q, str(OUT / f"{graph}_int8.xml"), compress_to_fp16=False)
    pickle.dump(held, open(OUT / f"held_{graph}.pkl", "wb"))

elif stage == "eval":
    # error vs ORT fp32 on held-out feeds; speed int8 vs bf16 (same process, interleaved)
    import openvino as ov, onnxruntime as ort
    graph = sys.argv[2]
    held = pickle.load(open(OUT / f"held_{graph}.pkl", "rb"))[:4]
    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
    res = {}
    sess = ort.InferenceSession(str(E / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
    ref = [sess.run(None, f)[0] for f in held]
    del sess; gc.collect()
    models = {}
    q = core.compile_model(str(OUT / f"{graph}_int8.xml"), "CPU", cfg)
    m = core.read_model(str(E / f"{graph}.onnx")); m.reshape({k: list(v.shape) for k, v in held[0].items()})
    from openvino._offline_transformations import compress_model_transformation
    compress_model_transformation(m)
    b = core.compile_model(m, "CPU", cfg); del m
    for name, c in (("int8", q), ("bf16", b)):
        kinds = {}
        for op in c.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info(); lt = rt["layerType"].astype(str)
            if lt in ("Convolution", "FullyConnected"):
                k = f"{lt}:{rt['primitiveType'].astype(str)}"; kinds[k] = kinds.get(k, 0) + 1
        r = c.create_infer_request()
        outs = [np.array(r.infer(f)[0], copy=True) for f in held]
        err = [float(np.abs(o - e).max() / np.abs(e).max()) for o, e in zip(outs, ref)]
        mean = [float(np.abs(o - e).mean() / np.abs(e).mean()) for o, e in zip(outs, ref)]
        res[name] = {"max_rel": err, "mean_rel": mean, "kernels": kinds}
        models[name] = r
    times = {"int8": [], "bf16": []}
    from maskst.bench.bench import CpuShare
    share = CpuShare(); share.start()
    for i in range(8):
        for name, r in models.items():
            t = time.perf_counter(); r.infer(held[0]); times[name].append((time.perf_counter() - t) * 1e3)
    load = share.stop()
    for name in times:
        res[name]["ms"] = times[name]; res[name]["ms_median"] = float(np.median(times[name]))
    res["cpu_share"] = load
    json.dump(res, open(OUT / f"eval_{graph}.json", "w"), indent=1)
    print(json.dumps({k: (v if k == "cpu_share" else {a: b for a, b in v.items() if a != "ms"}) for k, v in res.items()}, indent=1))
