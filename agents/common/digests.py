"""sha256 digests for files that vouch for themselves, shared by decision checkpoints and policy zips
(`agents.decision.checkpoint`) and AarenPPO exports (`agents.ppo.export`).

A manifest (a JSON object) records each file it covers as {"sha256": ..., "bytes": ...} (`file_record`)
and its own content under "digest" (`content_digest`), so a truncated, bit-flipped or edited file is
found before a parser reads it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def file_record(data: bytes) -> dict[str, Any]:
    """What a manifest records of one file: its sha256 and size (a short file reads as truncated)."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def content_digest(meta: Mapping[str, Any]) -> str:
    """sha256 of a manifest's content other than its "digest" (canonical JSON: layout does not count)."""
    body = {key: value for key, value in meta.items() if key != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def record_problem(data: bytes, record: Mapping[str, Any], manifest: str) -> str | None:
    """What is wrong with a file's `data` against its `record` in `manifest` (None: it matches), as the
    end of a sentence naming the file: "truncated: ...", "longer than written" or "damaged: ..."."""
    size = record.get("bytes")
    if isinstance(size, int) and len(data) < size:
        return f"truncated: {len(data)} of its {size} bytes"
    if isinstance(size, int) and len(data) > size:
        return "longer than written"
    if size != len(data) or hashlib.sha256(data).hexdigest() != record.get("sha256"):
        return f"damaged: its bytes do not match the sha256 digest in {manifest}"
    return None
