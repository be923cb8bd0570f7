"""CLIP's BPE vocabulary and merges, read from the copy shipped in ``open-clip-torch``.

Used to build offline models (test fixture, reference model). The file is read from the installed ``open_clip``
package without importing it (its import needs torchvision).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any

from cola_moderation.operators.errors import MissingDependencyError

VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"


def bpe_vocab_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "building a CLIP tokenizer offline needs the BPE vocabulary from open-clip-torch: "
            "pip install --no-deps open-clip-torch"
        )
    return Path(next(iter(spec.submodule_search_locations))) / VOCAB_NAME


def _bytes_to_unicode() -> dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's byte-level BPE: the 49,408-token vocabulary and its merges, in the original order."""
    lines = gzip.decompress(bpe_vocab_path().read_bytes()).decode("utf-8").split("\n")
    merges = [(first, second) for first, second in (line.split() for line in lines[1 : 49152 - 256 - 2 + 1])]
    base = list(_bytes_to_unicode().values())
    tokens = base + [token + "</w>" for token in base] + [first + second for first, second in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def clip_tokenizer(*, max_length: int = 77) -> Any:
    """A ``transformers`` CLIPTokenizer with OpenAI's vocabulary, built without network access."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    # The tokenizers backend wants (first, second) tuples; transformers' annotation says strings.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)  # type: ignore[arg-type]
