"""A real CLIP BPE tokenizer written offline from open_clip's bundled vocabulary.

The files (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json) load with
``transformers.CLIPTokenizer.from_pretrained(directory)`` and give the same 49408-token ids as
open_clip's ``get_tokenizer("ViT-H-14")`` (OpenAI CLIP's BPE) up to and including the end token.
Padding differs: the pad token is "<|endoftext|>" (id 49407, as in openai/clip-vit-large-patch14)
where open_clip pads with 0. Id 0 is "!", and transformers splits a pad token out of the text as a
special token, so a "!" pad would turn "wow!!" into two pad ids instead of open_clip's "!!</w>".
CLIP text models pool the first end token under a causal mask, so padding does not change their
pooled embeddings.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # OpenAI CLIP keeps merges[1:48895]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bundled_bpe_path() -> Path:
    """open_clip's copy of OpenAI's BPE merges, found without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"open_clip_torch is not installed; it ships {BPE_FILE}")
    path = Path(spec.origin).parent / BPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the open_clip_torch install")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's reversible map from bytes to printable unicode characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def write_clip_tokenizer(directory: str | Path, model_max_length: int = 77) -> Path:
    """Write the CLIP tokenizer files into ``directory`` (created if needed) and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(bundled_bpe_path(), "rt", encoding="utf-8") as file:
        lines = file.read().split("\n")
    merges = lines[1:NUM_MERGES + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(merge.split()) for merge in merges] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != 49408:
        raise ValueError(f"{bundled_bpe_path()} gave {len(vocab)} tokens, expected 49408")

    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                          encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
              "do_lower_case": True, "errors": "replace", "add_prefix_space": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory
