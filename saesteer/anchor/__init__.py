"""Anchoring the refusal activation: calibration (:mod:`saesteer.anchor.calibrate`, fitted on train / val prompts
only), its settings (:mod:`saesteer.anchor.settings`) and the saved anchor (:mod:`saesteer.anchor.artifact`)."""

from saesteer.anchor.artifact import AnchorArtifact, FeatureAnchor
from saesteer.anchor.calibrate import (
    calibrate_anchor,
    calibrate_feature_anchor,
    generated_projections,
    logistic_probe,
    token_probe,
)
from saesteer.anchor.settings import GATE_ROBUST, AnchorCalibration, FloorPositions, GatePooling, GateProbe

__all__ = [
    "FeatureAnchor",
    "AnchorArtifact",
    "logistic_probe",
    "token_probe",
    "generated_projections",
    "calibrate_feature_anchor",
    "calibrate_anchor",
    "GATE_ROBUST",
    "FloorPositions",
    "GateProbe",
    "GatePooling",
    "AnchorCalibration",
]
