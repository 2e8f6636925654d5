"""Damaged copies of the files commands read back, shared by the tests of bad input (issue #33). Importable from any
test module: pytest puts ``tests/`` on the path for its conftest."""

from __future__ import annotations

import json
from typing import Dict


def json_variants(good: bytes) -> Dict[str, bytes]:
    """A JSON file's bytes cut short, emptied, not JSON, of another type, its first field missing, its first field of
    another type."""
    text = good.decode()
    record = json.loads(text)
    variants = {"truncated": text[: len(text) // 2], "emptied": "", "not JSON": "{ no", "a list": "[1, 2]"}
    if isinstance(record, dict) and record:
        first = next(iter(record))
        variants["a field missing"] = json.dumps({k: v for k, v in record.items() if k != first})
        other = 7 if isinstance(record[first], (dict, list, str)) else {"nested": True}
        variants["a field of another type"] = json.dumps({**record, first: other})
    return {name: value.encode() for name, value in variants.items()}
