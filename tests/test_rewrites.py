"""Export-time rewrites (maskst.export.rewrites) compute what the diffusers modules compute, the exported
graphs carry them, and engines from an older graph revision are not reused by the benchmark's cache."""

from __future__ import annotations

import copy

import numpy as np
import pytest


def _unet_inputs(unet, seed: int, size: int = 16):
    import torch

    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    sample = torch.randn(2, cfg.in_channels, size, size, generator=g)
    text = torch.randn(2, 7, cfg.cross_attention_dim, generator=g)
    return sample, torch.tensor([321.0]), text


@pytest.mark.parametrize("preset", ["tiny", "tiny_wide"])
def test_split_geglu_computes_the_same_unet(preset, request):
    """Every GEGLU of a real diffusers UNet (two presets: other widths and head sizes) is replaced, and the
    UNet's output is unchanged: the same dot products, only the GEMM's blocking over the output width may
    differ (float32 sums of <= a few hundred terms: far below 1e-5 of outputs of magnitude ~1)."""
    import torch
    from diffusers.models.activations import GEGLU

    from maskst import torch_models
    from maskst.export.rewrites import split_geglu, split_geglu_class

    paths = request.getfixturevalue(preset)
    reference = torch_models.unet(paths.base)
    rewritten = copy.deepcopy(reference)
    expected = sum(type(m) is GEGLU for m in reference.modules())
    assert expected > 0  # the presets have transformer blocks with GEGLU feed-forwards
    assert split_geglu(rewritten) == expected
    assert not any(type(m) is GEGLU for m in rewritten.modules())
    assert sum(isinstance(m, split_geglu_class()) for m in rewritten.modules()) == expected
    assert split_geglu(rewritten) == 0  # nothing left to rewrite
    with torch.no_grad():
        for seed in (0, 1):
            args = _unet_inputs(reference, seed)
            want = reference(*args, return_dict=False)[0].numpy()
            got = rewritten(*args, return_dict=False)[0].numpy()
            assert np.abs(want).max() > 0.1
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_split_geglu_without_bias_and_at_other_widths():
    """A GEGLU built directly (no bias, odd widths): the rewritten module returns GEGLU.forward's values."""
    import torch
    from diffusers.models.activations import GEGLU

    from maskst.export.rewrites import split_geglu

    torch.manual_seed(3)
    for dim_in, dim_out, bias in ((5, 7, False), (24, 96, True)):
        model = torch.nn.Sequential(GEGLU(dim_in, dim_out, bias=bias)).eval()
        x = torch.randn(2, 3, dim_in)
        with torch.no_grad():
            want = model(x).numpy()
            assert split_geglu(model) == 1
            got = model(x).numpy()
        assert got.shape == (2, 3, dim_out)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_exported_unet_has_no_feed_forward_split(tiny_engines):
    """The exported UNet: each GEGLU's projection is two MatMuls and no Slice / Split of a wide one; the
    manifest records the graph revision."""
    import onnx

    from maskst.engines.manifest import load_manifest
    from maskst.export.graphs import GRAPH_REVISION

    manifest = load_manifest(tiny_engines, verify_hashes=False)
    assert manifest.data["graph_revision"] == GRAPH_REVISION
    graph = onnx.load(str(manifest.graph_path("unet")), load_external_data=False).graph
    feed_forward = [n for n in graph.node if "/ff/net.0/" in n.name]
    assert feed_forward, "the tiny UNet has transformer blocks"
    assert not [n.name for n in feed_forward if n.op_type in ("Slice", "Split")]
    assert len({n.name.rsplit("/", 2)[0] for n in feed_forward if n.op_type == "MatMul"}) * 2 == sum(
        n.op_type == "MatMul" for n in feed_forward)


def test_bench_cache_refuses_engines_of_another_graph_revision(tiny_engines):
    from maskst.bench.bench import engines_match
    from maskst.engines.manifest import Manifest, load_manifest
    from maskst.export.graphs import GRAPH_REVISION

    manifest = load_manifest(tiny_engines, verify_hashes=False)
    wanted = {"fixture": {"preset": "tiny", "seed": 0}, "export_options": {"precision": "fp32"}}
    recorded = {"engines_manifest": manifest.digest, **wanted}
    assert engines_match(recorded, manifest, wanted)
    older = Manifest(manifest.folder, {k: v for k, v in manifest.data.items() if k != "graph_revision"})
    assert GRAPH_REVISION > 1 and not engines_match(recorded, older, wanted)  # absent = revision 1
    assert not engines_match(recorded, Manifest(manifest.folder, {**manifest.data, "graph_revision": GRAPH_REVISION + 1}),
                             wanted)
    assert not engines_match({**recorded, "engines_manifest": "0" * 16}, manifest, wanted)
    assert not engines_match(recorded, manifest, {**wanted, "export_options": {"precision": "fp16"}})
    # a set whose UNet takes only B = 2N (before guidance off ran one row per image) is rebuilt too
    graphs = {name: {**entry, "spec": {k: v for k, v in entry["spec"].items() if k != "optional_factors"}}
              for name, entry in manifest.data["graphs"].items()}
    two_rows = Manifest(manifest.folder, {**manifest.data, "graphs": graphs})
    assert manifest.unguided_batch and not two_rows.unguided_batch and not engines_match(recorded, two_rows, wanted)
