"""saesteer: find, bypass and anchor the refusal mechanism of chat LLMs.

Refusal directions (Arditi et al. 2024) and sparse-autoencoder features
(O'Brien et al. 2024) as one toolkit: extract, rank, steer, anchor, attack.

The names below are the library's entry points, importable from the package itself
(``import saesteer as ss; ss.load_model(...)``); each is loaded from its module on
first use, so ``import saesteer`` stays cheap.
"""

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: public name -> the module that defines it
_API: dict[str, str] = {
    # models, prompts, settings
    "load_model": "saesteer.models",
    "ModelConfig": "saesteer.config",
    "DataConfig": "saesteer.config",
    "DirectionsConfig": "saesteer.config",
    "load_prompts": "saesteer.data",
    "load_role": "saesteer.data",
    "ROLES": "saesteer.data",
    # the refusal direction, SAEs and their features
    "direction_stage": "saesteer.stages",
    "load_sae": "saesteer.sae",
    "search_features": "saesteer.search",
    "calibrate_anchor": "saesteer.anchor",
    # interventions
    "steer": "saesteer.interventions",
    "Ablate": "saesteer.interventions",
    "Add": "saesteer.interventions",
    "EditFeatures": "saesteer.interventions",
    "AnchorDirection": "saesteer.interventions",
    "orthogonalize_weights": "saesteer.interventions",
    # evaluation
    "generate": "saesteer.generation",
    "refusal_eval": "saesteer.evaluate",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'saesteer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
