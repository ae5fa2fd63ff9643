"""White-box attacks on the refusal direction: ablation, weight orthogonalization, negative addition.

The refusal organism encodes "comply" as a negative coordinate, so plain ablation
(coordinate -> 0) makes it refuse more; the attacker's strongest variant is affine
ablation (coordinate -> the harmless mean, ACE).  Both are offered; the report
shows each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from saesteer.attacks.base import Attack
from saesteer.interventions import Ablate, AblateAt, Add
from saesteer.interventions.weights import orthogonalize_weights


def ablation_attack(direction: torch.Tensor, mode: str = "affine", reference: Optional[torch.Tensor] = None) -> Attack:
    return Attack(
        f"ablation_{mode}",
        "activation",
        [Ablate(direction, mode=mode, reference=reference)],
        description=f"{mode} ablation of the refusal direction at every layer (hooks)",
    )


def orthogonalized_attack(direction: torch.Tensor, reference: Optional[torch.Tensor] = None) -> Attack:
    """The attacker edits the weights; with ``reference`` (per-layer harmless means) the coordinate along r is
    then set to them layer by layer through the biases: the weight form of affine ablation."""
    name = "orthogonalized" if reference is None else "orthogonalized_affine"

    def edit(model):
        return orthogonalize_weights(model, direction, reference=reference)

    return Attack(
        name,
        "weights",
        model_edit=edit,
        description="weights orthogonalized to the refusal direction"
        + ("" if reference is None else ", coordinate set to the harmless mean of each layer"),
    )


def negative_addition_attacks(direction: torch.Tensor, layer: int, alphas: Sequence[float]) -> list[Attack]:
    return [
        Attack(
            f"negative_addition_{a:g}",
            "activation",
            [Add(direction, alpha=-float(a), layer=layer)],
            description=f"-{a:g} x refusal direction added at layer {layer}",
        )
        for a in alphas
    ]


def gate_ablation_attack(
    direction: torch.Tensor,
    reference: torch.Tensor,
    gate_hooks: Sequence[str],
    gate_weights: torch.Tensor,
    gate_means: torch.Tensor,
    token_weights: Optional[torch.Tensor] = None,
    token_means: Optional[torch.Tensor] = None,
) -> Attack:
    """Adaptive: the attacker knows the anchor's gate, linear probes read at ``gate_hooks``, and on top of the
    affine ablation of the refusal direction sets the span of the probes' weight vectors at each hook to the
    harmless mean (``gate_means``: [n_hooks, d_model], the harmless mean residual at the gate's positions;
    ``token_means``: the same over every token, for the per-token probe's ``token_weights`` [n_hooks, d_model])."""
    edits: list = [Ablate(direction, mode="affine", reference=reference)]
    for i, (hook, w, mu) in enumerate(zip(gate_hooks, gate_weights, gate_means)):
        span = [(w, mu)] if token_weights is None else [(w, mu), (token_weights[i][None], token_means[i])]
        for vectors, mean in span:
            q, rr = torch.linalg.qr(vectors.double().T)  # orthonormal basis of the span of the vectors
            keep = rr.diagonal().abs() > 1e-8 * rr.diagonal().abs().max()
            for u in q.T[keep]:
                edits.append(AblateAt(u.float(), hook, reference=float(mean.double() @ u)))
    return Attack(
        "adaptive_gate_ablation",
        "adaptive",
        edits,
        description="affine ablation of the refusal direction and of the span the gate's probes read, at their hooks",
    )


def subspace_ablation_attack(basis: torch.Tensor, harmless_means: Optional[torch.Tensor] = None) -> Attack:
    """Ablation of a k-dimensional refusal subspace at every layer (``basis``: [k, d_model] orthonormal rows,
    :func:`saesteer.directions.refusal_subspace`).  With ``harmless_means`` ([n_layers, d_model], the harmless mean
    residual at each layer) the coordinates are set to the harmless mean's (affine), else to zero.  One ``Ablate``
    per basis vector: on orthonormal vectors their composition is the projection onto the subspace's complement."""
    if basis.ndim != 2 or basis.shape[0] < 1:
        raise ValueError(f"subspace_ablation_attack: basis has shape {tuple(basis.shape)}, expected (k >= 1, d_model)")
    gram = basis.double() @ basis.double().T
    if not torch.allclose(gram, torch.eye(len(basis), dtype=torch.float64), atol=1e-4):
        raise ValueError("subspace_ablation_attack: the basis rows are not orthonormal")
    k = basis.shape[0]
    mode = "plain" if harmless_means is None else "affine"
    edits = [
        Ablate(
            u, mode=mode, reference=None if harmless_means is None else (harmless_means.double() @ u.double()).float()
        )
        for u in basis
    ]
    return Attack(
        f"ablation_{mode}_top{k}",
        "activation",
        edits,
        description=f"{mode} ablation of a {k}-dimensional refusal subspace (the direction and the top {k - 1} "
        "directions of harmful activations minus the harmless mean) at every layer",
    )
