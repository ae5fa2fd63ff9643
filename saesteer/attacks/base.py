"""What an attack is: hooks the attacker adds, a weight edit, a prompt rewrite, or any mix.

Attacks compose with defences in :func:`saesteer.attacks.evaluate.attack_success`:
the attacker's hooks run first at a hook point, the defender's anchors last
(``Intervention.order``), as a deployed anchor would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

from transformer_lens import HookedTransformer

from saesteer.checks import check_prompts
from saesteer.interventions import Intervention

ModelEdit = Callable[[HookedTransformer], HookedTransformer]
PromptRewrite = Callable[[str], str]


@dataclass
class Attack:
    """``name`` is used in metrics (``asr_<name>_<defence>``) and the report."""

    name: str
    family: str  # activation | weights | features | prompt | adaptive
    interventions: Sequence[Intervention] = field(default_factory=list)
    model_edit: Optional[ModelEdit] = None
    rewrite: Optional[PromptRewrite] = None
    description: str = ""

    @property
    def adaptive(self) -> bool:
        return self.family == "adaptive"

    def prompts(self, instructions: Sequence[str]) -> list[str]:
        check_prompts(instructions, "instructions")
        return [self.rewrite(p) for p in instructions] if self.rewrite else list(instructions)

    def model(self, model: HookedTransformer) -> HookedTransformer:
        return self.model_edit(model) if self.model_edit else model
