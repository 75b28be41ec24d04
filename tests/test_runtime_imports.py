"""The runtime hot path needs no torch (DESIGN section 6)."""

import subprocess
import sys


def test_generation_on_onnx_runtime_never_imports_torch(tiny_engines, style_image):
    code = (
        "import sys\n"
        "from maskst.generation import GenerationConfig\n"
        "from maskst.runtime.pipeline import MaskstPipeline\n"
        f"with MaskstPipeline({str(tiny_engines)!r}) as pipe:\n"
        f"    pipe.generate(GenerationConfig.create(prompt='a cat', style=({str(style_image)!r},), content='a house',"
        " steps=2, height=64, width=64))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'diffusers' not in sys.modules, 'diffusers was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
