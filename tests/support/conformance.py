"""
The Device OS 0.7.0 conformance recordings, kept in the repository (tests/conformance/) so every clone and
every CI run replays them: nothing here can be missing, so nothing skips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parents[1] / "conformance"
KEYS = CORPUS / "keys"


def transcript_names() -> list[str]:
    """Every recording the corpus index lists."""
    index = json.loads((CORPUS / "index.json").read_text())
    return [t["name"] for t in index["transcripts"]]


def load_transcript(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORPUS / "transcripts" / f"{name}.json").read_text())
    return data
