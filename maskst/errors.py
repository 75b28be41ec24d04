"""Typed errors. Every user-facing failure is one of these: the message names the input, the
value and the fix. CLIs map them to exit codes (``exit_code``) and print no traceback."""

from __future__ import annotations


class MaskstError(Exception):
    """Base class of every error maskst raises on purpose."""

    exit_code = 1


class InputError(MaskstError):
    """Bad user input: an image, a size, a prompt, an option value or an output path."""

    exit_code = 2


class CheckpointError(MaskstError):
    """A checkpoint folder or file is missing, truncated or does not fit the others."""

    exit_code = 3


class EngineError(MaskstError):
    """An engines folder is missing, incomplete, corrupt, stale or built elsewhere."""

    exit_code = 4


class ParityError(MaskstError):
    """An exported graph does not match its PyTorch reference within tolerance."""

    exit_code = 5

    def __init__(self, message: str, failures: list | None = None):
        super().__init__(message)
        self.failures = list(failures or [])


class BackendError(MaskstError):
    """A requested backend (GPU, TensorRT, OpenVINO) is not available or not active."""

    exit_code = 6


class NonFiniteError(MaskstError):
    """A pipeline stage produced NaN or infinity."""

    exit_code = 7
