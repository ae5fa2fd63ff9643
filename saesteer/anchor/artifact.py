"""A calibrated anchor (floors, gate, optional feature bounds), saved as safetensors plus JSON; it builds the
defences the attack suite compares: the anchor, CAST-style conditional addition and unconditional addition."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from saesteer.chat import get_template
from saesteer.interventions import Add, AnchorDirection, AnchorProjections, Intervention
from saesteer.interventions.gates import AnyGate, Gate, ProbeGate, TextGate, TokenProbeGate
from saesteer.io import load_tensors, save_tensors


@dataclass
class FeatureAnchor:
    """Bounds on the residual's coordinates along SAE decoder directions at the SAE's hook (:class:`AnchorProjections`)."""

    hook: str
    features: list[int]
    signs: list[int]  # +1 refusal feature (floor), -1 comply feature (ceiling)
    directions: torch.Tensor  # [m, d_model] unit decoder directions
    bounds: torch.Tensor  # [m] prompt tokens
    generated_bounds: torch.Tensor  # [m] generated tokens
    apply_to: str = "generated"  # prompt, generated or both

    def intervention(self, gate: Optional[Gate] = None, gate_read: bool = True) -> AnchorProjections:
        return AnchorProjections(
            self.directions,
            self.hook,
            self.bounds,
            self.signs,
            gate=gate,
            generated_bounds=self.generated_bounds,
            apply_to=self.apply_to,
            gate_read=gate_read,
        )


@dataclass
class TextClassifier:
    """A classifier of instruction text on its MiniLM-L6 sentence embedding e (:func:`saesteer.judge.learned.embed`,
    the instruction cut to ``max_tokens`` tokens): logistic, ``score = w . e + b``, or with one hidden layer,
    ``score = w . gelu(W_hidden e + b_hidden) + b``."""

    weights: torch.Tensor  # [384], or [d_hidden] with a hidden layer
    bias: float
    threshold: float
    template: str  # the chat template whose head and suffix the gate cuts off the prompt
    max_tokens: int = 256
    hidden_weights: Optional[torch.Tensor] = None  # [d_hidden, 384], or None (logistic)
    hidden_bias: Optional[torch.Tensor] = None  # [d_hidden]

    def __post_init__(self) -> None:
        if (self.hidden_weights is None) != (self.hidden_bias is None):
            raise ValueError("TextClassifier: hidden_weights and hidden_bias come together (both or neither)")
        d = self.weights.shape[-1]
        if self.hidden_weights is not None and (self.hidden_weights.shape[0] != d or self.hidden_bias.shape != (d,)):
            raise ValueError(
                f"TextClassifier: hidden_weights {tuple(self.hidden_weights.shape)} and hidden_bias "
                f"{tuple(self.hidden_bias.shape)} do not match weights [{d}]; expected [{d}, d_embed] and [{d}]"
            )

    def features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[n, d] what the output layer reads: the embeddings themselves, or the hidden layer's activations."""
        if self.hidden_weights is None:
            return embeddings
        return torch.nn.functional.gelu(embeddings @ self.hidden_weights.float().T + self.hidden_bias.float())

    def scores(self, texts: list[str]) -> torch.Tensor:
        """[len(texts)] scores of instruction texts."""
        from saesteer.judge.learned import embed

        return self.features(embed(texts, self.max_tokens)) @ self.weights.float() + float(self.bias)

    def gate(self) -> TextGate:
        return TextGate(
            hook="hook_embed", threshold=self.threshold, template=get_template(self.template), scorer=self.scores
        )


@dataclass
class AnchorArtifact:
    direction: torch.Tensor  # [d_model] refusal direction (raw difference in means)
    layer: int  # the direction's own layer (for additions)
    layers: list[int]
    final: bool
    floors: torch.Tensor  # [n_anchored_hooks] prompt tokens
    generated_floors: torch.Tensor  # [n_anchored_hooks] generated tokens
    gate_weights: torch.Tensor  # [n_gate_layers, n_positions, d_model]
    gate_layers: list[int]
    gate_positions: list[int]  # negative offsets (t_inst = -n_post - 1)
    gate_threshold: float
    gate_bias: float = 0.0
    token_weights: Optional[torch.Tensor] = None  # [n_gate_layers, d_model] per-token probe (max over tokens), or None
    token_threshold: float = 0.0
    token_bias: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    features: Optional[FeatureAnchor] = None  # SAE decoder-direction bounds, or None
    position_floors: Optional[torch.Tensor] = (
        None  # [n_anchored_hooks, n_post + 1] prompt floors of t_inst..-1, or None (``floors`` everywhere)
    )
    text: Optional[TextClassifier] = None  # the text gate's classifier, or None
    token_skip: int = 0  # leading real tokens the token probe does not read (the template's head)

    @property
    def gate_hooks(self) -> list[str]:
        return [f"blocks.{l}.hook_resid_pre" for l in self.gate_layers]

    def gate(self) -> Gate:
        """A fresh gate (gates hold per-batch state: one per intervention): the position probe, OR the token probe
        and the text classifier where calibrated."""
        probe = ProbeGate(
            hook=self.gate_hooks[-1],
            positions=tuple(self.gate_positions),
            threshold=self.gate_threshold,
            hooks=self.gate_hooks,
            weights=self.gate_weights,
            bias=self.gate_bias,
        )
        members: list[Gate] = [probe]
        if self.token_weights is not None:
            members.append(
                TokenProbeGate(
                    hook=self.gate_hooks[-1],
                    threshold=self.token_threshold,
                    hooks=self.gate_hooks,
                    weights=self.token_weights,
                    bias=self.token_bias,
                    skip=self.token_skip,
                )
            )
        if self.text is not None:
            members.append(self.text.gate())
        return probe if len(members) == 1 else AnyGate(hook=self.gate_hooks[-1], gates=members)

    def _direction_anchor(self, gate: Optional[Gate]) -> AnchorDirection:
        return AnchorDirection(
            self.direction,
            self.layers,
            self.floors,
            gate=gate,
            final=self.final,
            generated_floors=self.generated_floors,
            position_floors=self.position_floors,
        )

    def anchor(self, gated: bool = True) -> AnchorDirection:
        """The direction's anchor alone."""
        return self._direction_anchor(self.gate() if gated else None)

    def anchors(self, gated: bool = True) -> list[Intervention]:
        """The whole defence: the direction's anchor and, when calibrated, the SAE feature bounds, sharing one gate decision."""
        gate = self.gate() if gated else None
        out: list[Intervention] = [self._direction_anchor(gate)]
        if self.features is not None:
            out.append(self.features.intervention(gate, gate_read=False))  # the direction anchor reads the shared gate
        return out

    def cast(self, alpha: float = 1.0) -> Add:
        """Conditional activation steering (CAST-style): add alpha * r where the gate fires."""
        return Add(self.direction, alpha=alpha, layer=self.layer, gate=self.gate())

    def addition(self, alpha: float = 1.0) -> Add:
        return Add(self.direction, alpha=alpha, layer=self.layer)

    def save(self, path: str | Path) -> Path:
        meta = {
            "kind": "anchor",
            "layer": self.layer,
            "layers": self.layers,
            "final": self.final,
            "gate_layers": self.gate_layers,
            "gate_positions": self.gate_positions,
            "gate_threshold": self.gate_threshold,
            "gate_bias": self.gate_bias,
            "token_threshold": self.token_threshold,
            "token_bias": self.token_bias,
            "token_skip": self.token_skip,
            **self.metadata,
        }
        tensors = {
            "direction": self.direction,
            "floors": self.floors,
            "generated_floors": self.generated_floors,
            "gate_weights": self.gate_weights,
        }
        if self.token_weights is not None:
            tensors["token_weights"] = self.token_weights
        if self.position_floors is not None:
            tensors["position_floors"] = self.position_floors
        if self.text is not None:
            tensors["text_weights"] = self.text.weights
            if self.text.hidden_weights is not None:
                tensors["text_hidden_weights"] = self.text.hidden_weights
                tensors["text_hidden_bias"] = self.text.hidden_bias
            meta.update(
                text_bias=self.text.bias,
                text_threshold=self.text.threshold,
                text_template=self.text.template,
                text_max_tokens=self.text.max_tokens,
            )
        if self.features is not None:
            fa = self.features
            meta.update(
                feature_hook=fa.hook, feature_ids=fa.features, feature_signs=fa.signs, feature_apply_to=fa.apply_to
            )
            tensors.update(
                feature_directions=fa.directions, feature_bounds=fa.bounds, feature_generated_bounds=fa.generated_bounds
            )
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, d_model: Optional[int] = None) -> AnchorArtifact:
        tensors, meta = load_tensors(path)
        if meta.get("kind") != "anchor":
            raise ValueError(f"{path} is not an anchor artifact (metadata kind={meta.get('kind')!r})")
        if d_model is not None and tensors["direction"].shape[-1] != d_model:
            raise ValueError(f"anchor {path} has d_model={tensors['direction'].shape[-1]}, the model has {d_model}")
        if "gate_weights" not in tensors:
            raise ValueError(
                f"anchor {path} has no gate_weights (written by an older saesteer): recalibrate it with `saesteer anchor`"
            )
        keys = (
            "kind",
            "layer",
            "layers",
            "final",
            "gate_layers",
            "gate_positions",
            "gate_threshold",
            "gate_bias",
            "token_threshold",
            "token_bias",
            "token_skip",
            "feature_hook",
            "feature_ids",
            "feature_signs",
            "feature_apply_to",
            "text_bias",
            "text_threshold",
            "text_template",
            "text_max_tokens",
        )
        features = None
        if "feature_directions" in tensors:
            features = FeatureAnchor(
                str(meta["feature_hook"]),
                [int(f) for f in meta["feature_ids"]],
                [int(s) for s in meta["feature_signs"]],
                tensors["feature_directions"],
                tensors["feature_bounds"],
                tensors["feature_generated_bounds"],
                str(meta.get("feature_apply_to", "generated")),
            )
            if d_model is not None and features.directions.shape[-1] != d_model:
                raise ValueError(
                    f"anchor {path} has feature directions of d={features.directions.shape[-1]}, the model has d_model={d_model}"
                )
        text = None
        if "text_weights" in tensors:
            text = TextClassifier(
                tensors["text_weights"],
                float(meta["text_bias"]),
                float(meta["text_threshold"]),
                str(meta["text_template"]),
                int(meta["text_max_tokens"]),
                tensors.get("text_hidden_weights"),
                tensors.get("text_hidden_bias"),
            )
        return cls(
            tensors["direction"],
            int(meta["layer"]),
            [int(l) for l in meta["layers"]],
            bool(meta["final"]),
            tensors["floors"],
            tensors["generated_floors"],
            tensors["gate_weights"],
            [int(l) for l in meta["gate_layers"]],
            [int(p) for p in meta["gate_positions"]],
            float(meta["gate_threshold"]),
            float(meta["gate_bias"]),
            tensors.get("token_weights"),
            float(meta.get("token_threshold", 0.0)),
            float(meta.get("token_bias", 0.0)),
            {k: v for k, v in meta.items() if k not in keys},
            features,
            tensors.get("position_floors"),
            text,
            int(meta.get("token_skip", 0)),
        )
