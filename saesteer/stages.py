"""Cached stage outputs shared by jobs and the pipeline (so a warm run recomputes nothing).

Each stage result is an artifact under ``cache_dir()/<stage>/<key>`` where the key
hashes the model's weights fingerprint, the prompt data and the stage config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from saesteer.activations import model_fingerprint
from saesteer.directions import CandidateScore, compute_candidates, load_direction, save_direction, select_direction
from saesteer.io import cache_dir, hash_strings, write_json
from saesteer.models import LoadedModel

log = logging.getLogger(__name__)

#: bump when a stage's code changes what the same inputs produce (invalidates caches)
STAGE_VERSION = {"directions": 2}


@dataclass
class DirectionArtifact:
    direction: torch.Tensor  # raw difference in means at (layer, position)
    layer: int
    position: int
    reference: torch.Tensor  # affine reference per layer
    ablation: str
    path: Path
    metadata: dict[str, Any]
    scores: list[CandidateScore] = dataclasses.field(default_factory=list)

    @property
    def unit(self) -> torch.Tensor:
        return self.direction / self.direction.norm()

    def ablate(self, mode: Optional[str] = None):
        from saesteer.interventions import Ablate

        mode = mode or self.ablation
        return Ablate(self.direction, mode=mode, reference=self.reference if mode == "affine" else None)

    def add(self, alpha: float = 1.0):
        from saesteer.interventions import Add

        return Add(self.direction, alpha=alpha, layer=self.layer)


def stage_key(loaded: LoadedModel, *parts: Any) -> str:
    blob = [model_fingerprint(loaded.model), loaded.template.name] + [json.dumps(p, sort_keys=True, default=str) for p in parts]
    return hash_strings(blob)


def direction_stage(loaded: LoadedModel, data_cfg: Any, dir_cfg: Any, *, path: Optional[str] = None, progress: bool = False) -> DirectionArtifact:
    """The refusal direction: from ``path``, from the cache, or extracted and selected now."""
    from saesteer.jobs.common import load_role

    if path:
        d, meta = load_direction(path, d_model=loaded.d_model, model_name=loaded.name, fingerprint=model_fingerprint(loaded.model))
        ref = meta.pop("affine_reference", torch.zeros(loaded.n_layers))
        scores_file = Path(path).with_name("candidates.json")
        scores = [CandidateScore(**s) for s in json.loads(scores_file.read_text())] if scores_file.is_file() else []
        return DirectionArtifact(d, int(meta["layer"]), int(meta["position"]), ref, meta.get("ablation", "plain"), Path(path), meta, scores)
    roles = {r: load_role(data_cfg, r) for r in ("harmful_train", "harmless_train", "harmful_val", "harmless_val")}
    key = stage_key(loaded, {r: p.data_hash for r, p in roles.items()}, dataclasses.asdict(dir_cfg), STAGE_VERSION["directions"])
    file = cache_dir() / "directions" / key / "direction.safetensors"
    if file.is_file():
        log.info("refusal direction from cache %s", file)
        return direction_stage(loaded, data_cfg, dir_cfg, path=str(file))
    m, tpl = loaded.model, loaded.template
    cands = compute_candidates(m, tpl, list(roles["harmful_train"].instructions), list(roles["harmless_train"].instructions),
                               positions=dir_cfg.positions, batch_size=dir_cfg.batch_size, progress=progress)
    sel = select_direction(m, tpl, cands, list(roles["harmful_val"].instructions), list(roles["harmless_val"].instructions),
                           dir_cfg.selection(), progress=progress)
    meta = {"model": loaded.name, "model_fingerprint": model_fingerprint(m), "template": tpl.name, "config": dataclasses.asdict(dir_cfg)}
    write_json(file.with_name("candidates.json"), [dataclasses.asdict(s) for s in sel.scores])
    save_direction(file, sel, meta)
    return direction_stage(loaded, data_cfg, dir_cfg, path=str(file))
