"""Bundle the default organism's weights with the package (saesteer/resources/organism/).

Loads the organism of the default recipe (conf/model/organism.yaml) from the cache, or
trains it, and writes the bundle a fresh install starts from.  Run it after any change
to the recipe, its data or RECIPE_VERSION: tests/organism/test_bundle.py fails until the
bundle's key matches the default recipe again.

    python scripts/bundle_organism.py [--retrain]
"""

from __future__ import annotations

import argparse
import logging

from omegaconf import OmegaConf

from saesteer.jobs.common import compose
from saesteer.organism.bundle import write_bundle
from saesteer.organism.train import load_organism, organism_path, save_organism, train_organism


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--retrain", action="store_true", help="train even when the cache holds the organism")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = OmegaConf.to_object(compose("organism", ["logger=none"])).model.organism
    path = organism_path(cfg)
    if (path / "model.safetensors").is_file() and not args.retrain:
        result = load_organism(path)
        model, meta = result.model, result.metadata
        if meta.get("bundled"):
            raise SystemExit(f"the cached organism at {path} came from the bundle itself; pass --retrain to train it")
    else:
        model, meta = train_organism(cfg)
        save_organism(model, cfg, meta, path)
    out = write_bundle(model, cfg, meta, path.name)
    print(
        f"bundled organism {path.name} ({out.stat().st_size / 1e6:.1f} MB, trained in {meta['train_seconds']:.0f}s) -> {out}"
    )


if __name__ == "__main__":
    main()
