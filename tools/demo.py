"""`make demo`: the pipeline on the embedded default (CPU, SmolLM2-135M, real Tibetan data)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_tibetan.text import count_syllables, normalize  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    lines = (DATA / "eval" / "flores200.dev.bo").read_text(encoding="utf-8").splitlines()
    normalised = [normalize(x) for x in lines]
    changed = sum(a != b for a, b in zip(lines, normalised))
    print(f"[demo] normalised {len(lines)} FLORES dev Tibetan lines ({changed} changed), "
          f"{sum(map(count_syllables, normalised))} syllables")


if __name__ == "__main__":
    main()
