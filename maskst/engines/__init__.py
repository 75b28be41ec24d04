"""Engines folders: manifest, build lock and atomic publish, fp16 conversion, TensorRT plans."""
