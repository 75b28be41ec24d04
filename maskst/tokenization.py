"""Tokenization with CLIP's 77-token limit and a documented truncation policy.

Policy (the same as diffusers'): text longer than the encoder's ``model_max_length`` (77 tokens
with start and end tokens) is truncated, and a :class:`PromptTruncatedWarning` names the words
that were dropped. Shorter text is padded to the full length, as the exported graphs expect.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from maskst.errors import CheckpointError, InputError


class PromptTruncatedWarning(UserWarning):
    """A prompt or content text was longer than the text encoder accepts; the tail was dropped."""


def load_tokenizer(folder: Path):
    """transformers CLIPTokenizer from a folder with vocab.json + merges.txt (or tokenizer.json)."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"tokenizer in {folder} could not be loaded ({exc}); check its vocab.json and merges.txt") from None


def check_text(text, what: str) -> None:
    """InputError unless ``text`` is a str that encodes as UTF-8.

    Command-line bytes that are not UTF-8 reach Python as lone surrogates (``$'\\xff'`` ->
    ``"\\udcff"``, PEP 383), and so does a JSON ``"\\ud800"`` escape; the tokenizers fail on them with
    a TypeError. ``what`` names the text: "prompt", "negative prompt", "content text".
    """
    if not isinstance(text, str):
        raise InputError(f"{what} must be text; got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:  # show the bytes the user passed
            shown = repr(text.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            shown = ascii(text)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InputError(f"{what} holds bytes that are not UTF-8 text ({shown}); pass the {what} as UTF-8 "
                         "(check the terminal's or the file's encoding)") from None


def tokenize(tokenizer, texts: list[str], what: str, length: int | None = None) -> np.ndarray:
    """int64 [len(texts), length] token ids, padded; warns naming the dropped words.

    ``length``: the text encoder's sequence length (the exported graph's fixed input width);
    default the tokenizer's ``model_max_length`` (77 for CLIP).
    """
    for text in texts:
        check_text(text, what)
    length = int(length or tokenizer.model_max_length)
    for text in texts:
        full = tokenizer(text, truncation=False).input_ids  # with start and end tokens
        if len(full) > length:
            dropped = tokenizer.decode(full[length - 1 : -1], skip_special_tokens=True)
            warnings.warn(
                f"{what} is longer than {length} tokens; these words were dropped: {dropped!r}",
                PromptTruncatedWarning,
                stacklevel=2,
            )
    ids = tokenizer(list(texts), padding="max_length", max_length=length, truncation=True, return_tensors="np")
    return ids.input_ids.astype(np.int64)
