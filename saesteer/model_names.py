"""TransformerLens model names: the official list, aliases, and a clear error for unknown names."""

from __future__ import annotations

import difflib


class ModelLoadError(ValueError):
    """A model name could not be resolved or its weights could not be loaded."""


def official_model_names() -> list[str]:
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    return list(OFFICIAL_MODEL_NAMES)


def resolve_model_name(name: str) -> str:
    """The official TransformerLens name for ``name`` (or an alias); a clear error otherwise."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        names = official_model_names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(
            f"unknown model {name!r}: not 'organism' and not a TransformerLens pretrained model name{hint}"
        ) from None
