"""Interventions: the one way saesteer edits a model (specs applied as hooks by ``steer``)."""

from saesteer.interventions.anchors import AnchorDirection, AnchorFeatures, AnchorProjections
from saesteer.interventions.directions import Ablate, AblateAt, Add
from saesteer.interventions.features import EditFeatures
from saesteer.interventions.gates import DirectionGate, FeatureGate, ProbeGate
from saesteer.interventions.steer import as_interventions, collect_hooks, steer
from saesteer.interventions.weights import OrthogonalizeWeights, orthogonalize_weights
from saesteer.primitives.intervention import Intervention

__all__ = [
    "Ablate",
    "AblateAt",
    "Add",
    "AnchorDirection",
    "AnchorFeatures",
    "AnchorProjections",
    "DirectionGate",
    "EditFeatures",
    "FeatureGate",
    "Intervention",
    "OrthogonalizeWeights",
    "ProbeGate",
    "as_interventions",
    "collect_hooks",
    "orthogonalize_weights",
    "steer",
]
