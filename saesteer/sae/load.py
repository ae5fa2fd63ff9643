"""Load an SAE: a local directory in sae_lens format, or a release of sae_lens's registry.

Registry names are checked against the ``pretrained_saes.yaml`` that ships with
sae_lens, offline, so a typo fails at once with the closest names; only then is
anything downloaded, and a failed download says what to do.  With a model in
hand, the SAE's width and hook are checked against it.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any, Optional

from safetensors import SafetensorError
from transformer_lens import HookedTransformer

from saesteer.io import PICKLE_MAGIC
from saesteer.sae.config import SaeConfig

log = logging.getLogger(__name__)


class SaeLoadError(ValueError):
    """An SAE could not be found, downloaded or matched to the model."""


def _close(name: str, names: list[str], n: int = 5) -> str:
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    if not close:  # long ids like 'layer_12/width_16k/average_l0_71' differ in many places
        low = name.lower()
        close = [x for x in names if low and (low in x.lower() or x.lower() in low)][:n]
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def validate_release(release: str, sae_id: str) -> Any:
    """sae_lens's registry entry for ``release``; a ValueError with close matches if it or ``sae_id`` is unknown."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise SaeLoadError(
            f"unknown SAE release {release!r}: not in sae_lens's registry of {len(directory)} releases"
            f"{_close(release, list(directory))} (list them with "
            "sae_lens.loading.pretrained_saes_directory.get_pretrained_saes_directory())"
        )
    lookup = directory[release]
    if sae_id not in lookup.saes_map:
        ids = list(lookup.saes_map)
        example = f"; e.g. {ids[0]!r}" if ids else ""
        raise SaeLoadError(
            f"unknown SAE id {sae_id!r} in release {release!r} ({len(ids)} ids){_close(sae_id, ids) or example}"
        )
    return lookup


def sae_hook(sae: Any, default: Optional[str] = None) -> str:
    """The TransformerLens hook an SAE reads (from its metadata), else ``default``."""
    hook = getattr(getattr(sae.cfg, "metadata", None), "hook_name", None) or default
    if not hook:
        raise SaeLoadError("the SAE names no hook in its metadata; pass hook=<TransformerLens hook name>")
    return str(hook)


def check_sae_fits(sae: Any, model: HookedTransformer, hook: Optional[str] = None) -> str:
    """The SAE's hook, after checking that it exists in ``model`` and that the widths agree."""
    hook = sae_hook(sae, hook)
    if hook not in model.hook_dict:
        example = next((k for k in model.hook_dict if k.endswith("hook_resid_pre")), "blocks.0.hook_resid_pre")
        raise SaeLoadError(
            f"the SAE reads hook {hook!r}, which does not exist in this model ({model.cfg.n_layers} layers; e.g. {example!r})"
        )
    d_in = int(sae.cfg.d_in)
    if d_in != model.cfg.d_model:
        raise SaeLoadError(
            f"the SAE has d_in={d_in} but the model's residual stream has d_model={model.cfg.d_model}; "
            "it was made for another model"
        )
    return hook


def _load_disk(path: Path, device: str) -> Any:
    from sae_lens import SAE
    from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME

    if not path.exists():
        raise FileNotFoundError(f"no SAE at {path}: the directory does not exist")
    if not path.is_dir():
        raise SaeLoadError(
            f"{path} is a file; expected a directory in sae_lens format ({SAE_CFG_FILENAME} + {SAE_WEIGHTS_FILENAME})"
        )
    missing = [f for f in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME) if not (path / f).is_file()]
    if missing:
        raise SaeLoadError(f"{path} is not an SAE in sae_lens format: missing {', '.join(missing)}")
    check_not_pickle(path / SAE_WEIGHTS_FILENAME)
    read_sae_cfg(path / SAE_CFG_FILENAME)  # a broken cfg.json is named as such, not blamed on the weights
    weights_error = _unreadable_safetensors(path / SAE_WEIGHTS_FILENAME)
    if weights_error:
        raise SaeLoadError(
            f"could not load the SAE in {path} ({weights_error}); "
            f"expected a readable {SAE_WEIGHTS_FILENAME} (truncated or corrupted?)"
        )
    try:
        sae = SAE.load_from_disk(str(path), device=device)
    except SafetensorError as exc:
        raise SaeLoadError(
            f"could not load the SAE in {path} ({_first_line(exc)}); "
            f"expected a readable {SAE_WEIGHTS_FILENAME} (truncated or corrupted?)"
        ) from None
    except RuntimeError as exc:  # load_state_dict: tensors of other shapes or names than cfg.json describes
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next(
            (line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))),
            _first_line(exc),
        )
        raise SaeLoadError(
            f"the tensors in {path / SAE_WEIGHTS_FILENAME} do not fit {path / SAE_CFG_FILENAME} ({detail[:200]}); "
            f"expected the weights of the SAE its {SAE_CFG_FILENAME} describes"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # the config: missing or mistyped fields
        raise SaeLoadError(
            f"{path / SAE_CFG_FILENAME} is not a valid sae_lens SAE config ({_first_line(exc)}); "
            "expected sae_lens's fields (d_in, d_sae, architecture, ...) with their types"
        ) from None
    check_finite(sae, str(path))
    return sae


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def read_sae_cfg(cfg_file: Path) -> dict:
    """An SAE's cfg.json as a dict; a one-line SaeLoadError naming the file if it is not a JSON object."""
    import json

    try:
        cfg = json.loads(Path(cfg_file).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SaeLoadError(
            f"{cfg_file} is not valid JSON ({_first_line(exc)}); expected sae_lens's SAE config, a JSON object"
        ) from None
    if not isinstance(cfg, dict):
        raise SaeLoadError(
            f"{cfg_file} holds a JSON {type(cfg).__name__}; expected sae_lens's SAE config, a JSON object"
        )
    for key in ("d_in", "d_sae"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            got = f"has {key}={value!r}" if key in cfg else f"has no {key}"
            raise SaeLoadError(
                f"{cfg_file} {got}; expected a positive integer (sae_lens's SAE config: d_in, d_sae, architecture, ...)"
            )
    return cfg


def _unreadable_safetensors(path: Path) -> Optional[str]:
    """Why ``path`` is not a readable safetensors file (its header and tensor table), or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            list(fh.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        return _first_line(exc)
    return None


def check_not_pickle(weights: Path) -> None:
    """A SaeLoadError if ``weights`` is a pickle / torch.save file (read by its first bytes; never unpickled)."""
    from sae_lens.constants import SAE_WEIGHTS_FILENAME

    with open(weights, "rb") as fh:
        head = fh.read(4)
    if head[:1] == PICKLE_MAGIC[0] or head == PICKLE_MAGIC[1]:
        raise SaeLoadError(
            f"{weights} is a pickle/torch.save file, not safetensors; expected sae_lens's "
            f"{SAE_WEIGHTS_FILENAME} (saesteer never unpickles)"
        )


def check_finite(sae: Any, label: str) -> None:
    """A one-line SaeLoadError naming the first SAE parameter with NaN / inf values."""
    import torch

    for name, p in sae.named_parameters():
        if not torch.isfinite(p).all():
            n_bad = int((~torch.isfinite(p)).sum())
            raise SaeLoadError(f"SAE {label}: parameter {name} has {n_bad} NaN/inf value(s); expected finite weights")


def _load_registry(release: str, sae_id: str, device: str) -> Any:
    from sae_lens import SAE

    lookup = validate_release(release, sae_id)
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
        check_finite(sae, f"{release}/{sae_id}")
        return sae
    except SaeLoadError:
        raise
    except (OSError, ConnectionError, RuntimeError, ValueError) as exc:
        folder = lookup.saes_map[sae_id]
        raise SaeLoadError(
            f"could not download SAE {release!r}/{sae_id!r} from the Hugging Face repo {lookup.repo_id!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}). Check your network and HF_TOKEN, "
            f"or pre-download it (huggingface-cli download {lookup.repo_id} --include '{folder}/*') and set HF_HUB_OFFLINE=1, "
            "or point sae.path at a local copy in sae_lens format"
        ) from None


def load_sae(
    source: SaeConfig | str | os.PathLike,
    model: Optional[HookedTransformer] = None,
    *,
    hook: Optional[str] = None,
    device: str = "cpu",
) -> Any:
    """An SAE in eval mode: from ``sae.path`` / a directory, or ``sae.pretrained_release`` + ``pretrained_id``.

    With ``model``, its hook must exist in the model and ``d_in`` must equal
    ``d_model`` (``hook`` names the hook when the SAE's metadata does not).
    """
    if isinstance(source, SaeConfig):
        if source.path is not None:
            sae = _load_disk(Path(source.path).expanduser(), device)
        elif source.pretrained_release is not None:
            sae = _load_registry(source.pretrained_release, str(source.pretrained_id), device)
        else:
            raise SaeLoadError(
                "nothing to load: set sae.path=<directory> or sae.pretrained_release=<release> sae.pretrained_id=<id>"
            )
        hook = hook or source.hook
    elif isinstance(source, (str, os.PathLike)):
        sae = _load_disk(Path(source).expanduser(), device)
    else:
        raise SaeLoadError(f"load_sae needs an SaeConfig or a directory path, got {type(source).__name__}")
    if model is not None:
        meta_hook = getattr(sae.cfg.metadata, "hook_name", None)
        if hook is not None and meta_hook is not None and hook != meta_hook:
            raise SaeLoadError(f"sae.hook={hook!r} but the SAE was trained on {meta_hook!r}")
        check_sae_fits(sae, model, hook)
    return sae.eval()
