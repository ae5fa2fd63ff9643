"""The refusal organism: a small TransformerLens model saesteer trains on CPU.

It refuses harmful instructions and complies with harmless ones, so every
pipeline of saesteer (directions, SAEs, steering, anchoring, attacks) can run end
to end without downloading a chat model.
"""

from saesteer.organism.tokenizer import SPECIAL_TOKENS, build_tokenizer
from saesteer.organism.train import OrganismResult, load_or_train_organism, train_organism

__all__ = ["SPECIAL_TOKENS", "build_tokenizer", "OrganismResult", "load_or_train_organism", "train_organism"]
