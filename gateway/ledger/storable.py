"""Making a record storable: text every database takes, and a last-resort form of a record
the database still refuses.

Free-form text reaches the ledger from callers (``user``, ``metadata``, model names of
refused requests). PostgreSQL refuses a NUL character in text and JSON, and no UTF-8
database takes a lone surrogate, so both are replaced by U+FFFD (the Unicode replacement
character) in every text field and in the tags, keys and values alike; everything else is
stored as sent. A record refused even so (a tag value no JSON column takes, a number out of
a column's range) is stored once more with its tags replaced by a note: the spend is kept,
the caller's free-form data is not.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from gateway.ledger.records import SpendRecord

REPLACEMENT = "\ufffd"
# NUL, and any surrogate code point: in a Python str a surrogate always stands alone (a
# well-formed pair is decoded into one character), and UTF-8 cannot encode it.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_TEXT_FIELDS = tuple(
    f.name for f in dataclasses.fields(SpendRecord) if f.type in ("str", "str | None")
)
SALVAGE_TAG = "ledger_note"


def storable_text(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD."""
    return _UNSTORABLE.sub(REPLACEMENT, text) if _UNSTORABLE.search(text) else text


def storable_value(value: Any) -> Any:
    """A JSON-like value with every string (mapping keys included) made storable, and
    floats JSON cannot hold (NaN, infinities) written out as text."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): storable_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def storable(record: SpendRecord) -> SpendRecord:
    """``record`` as every ledger database takes it (the same object when it already is)."""
    changes: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = getattr(record, name)
        if isinstance(value, str):
            clean = storable_text(value)
            if clean is not value:
                changes[name] = clean
    if record.tags:
        try:
            tags = storable_value(record.tags)
        except RecursionError:  # nested deeper than Python recurses: not kept
            tags = {SALVAGE_TAG: "tags nested too deep to store"}
        if tags != record.tags:
            changes["tags"] = tags
    if record.content:
        try:
            content = storable_value(record.content)
        except RecursionError:
            content = None
        if content != record.content:
            changes["content"] = content
    return dataclasses.replace(record, **changes) if changes else record


def salvaged(record: SpendRecord, reason: str) -> SpendRecord:
    """The last-resort form of a record the database refused: its tags replaced by a note
    saying why, everything the bill needs kept."""
    note = storable_text(f"tags not stored: the database refused them ({reason})")[:300]
    return dataclasses.replace(record, tags={SALVAGE_TAG: note}, content=None)
