"""Safety fine-tuning: a low-rank adapter that teaches a chat model to refuse harmful requests while it keeps its
own answers to harmless ones, and the small float16 delta it ships as (:func:`load_safety_delta`)."""

from saesteer.safety.adapter import LowRankAdapter
from saesteer.safety.delta import SafetyDeltaError, bundled_delta_path, load_safety_delta, save_safety_delta

__all__ = ["LowRankAdapter", "SafetyDeltaError", "bundled_delta_path", "load_safety_delta", "save_safety_delta"]
