"""PII redaction before a prompt leaves: personal data is replaced with placeholders
(``[EMAIL_1]``, ``[IBAN_1]``, …) in what is sent upstream and put back in the answer the caller
gets, streamed answers included (a placeholder split across chunks is held until whole).

What is found, and how:

- e-mail addresses and phone numbers (international ``+CC …`` form, or a national number
  starting with 0): patterns;
- IBANs, payment card numbers and national identifiers of EU countries: candidates found by
  pattern, kept only when python-stdnum validates their check digits (IBAN mod 97, Luhn,
  Spain's DNI/NIE, Italy's codice fiscale, France's NIR, Poland's PESEL, Belgium's national
  number, Germany's tax id, the Netherlands' BSN).

Names are found only where a detector is configured (``pii.names_detector: "module:function"``,
a function of a text giving the ``(start, end)`` spans of names in it, e.g. a wrapper around
Presidio with a spaCy model the deployer installs): that takes a language model, which the
gateway neither ships nor downloads. python-stdnum is pure Python and ships its checks with it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from stdnum import iban, luhn
from stdnum.be import nn as be_nn
from stdnum.de import idnr as de_idnr
from stdnum.es import dni as es_dni
from stdnum.es import nie as es_nie
from stdnum.fr import nir as fr_nir
from stdnum.it import codicefiscale as it_cf
from stdnum.nl import bsn as nl_bsn
from stdnum.pl import pesel as pl_pesel

JSON = dict[str, Any]


def _digits(text: str) -> str:
    return re.sub(r"[ .-]", "", text)


def _card(text: str) -> bool:
    digits = _digits(text)
    return 13 <= len(digits) <= 19 and luhn.is_valid(digits)


def _national_id(text: str) -> bool:
    compact = _digits(text).upper()
    checks = (es_dni, es_nie, it_cf, fr_nir, pl_pesel, be_nn, de_idnr, nl_bsn)
    return any(check.is_valid(compact) for check in checks)


# (kind, pattern, validator or None), in priority order: an earlier kind wins an overlap.
DETECTORS: tuple[tuple[str, re.Pattern[str], Callable[[str], bool] | None], ...] = (
    (
        "EMAIL",
        re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
        None,
    ),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), iban.is_valid),
    ("CARD", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _card),
    (
        "NATIONAL_ID",
        re.compile(
            r"\b(?:[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]"  # IT codice fiscale
            r"|[XYZ]?\d{7,8}[A-Z]"  # ES DNI / NIE
            r"|\d{9,15})\b"  # FR NIR, PL PESEL, BE NN, DE IdNr, NL BSN
        ),
        _national_id,
    ),
    (
        "PHONE",
        re.compile(r"(?<![\w+])(?:\+\d{1,3}|0)(?:[ .-]?\(?\d{1,4}\)?){2,5}\d(?!\w)"),
        lambda text: 8 <= len(re.sub(r"\D", "", text)) <= 15,
    ),
)
NAME = "NAME"  # found by a configured detector, not a pattern
KINDS = (*(kind for kind, _, _ in DETECTORS), NAME)
NameFinder = Callable[[str], Iterable[tuple[int, int]]]
_DIGIT = re.compile(r"\d")
PLACEHOLDER = re.compile(r"\[(?:" + "|".join(KINDS) + r")_\d+\]")
# The longest tail of a chunk that may be the start of a placeholder: held for the next one.
_PARTIAL = re.compile(r"\[[A-Z_]{0,12}\d{0,6}$")


@dataclass(slots=True)
class Vault:
    """The placeholders of one request and the values they stand for."""

    names: NameFinder | None = None  # the configured names detector, if any
    values: dict[str, str] = field(default_factory=dict)  # placeholder → original
    _by_value: dict[tuple[str, str], str] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)

    def placeholder(self, kind: str, value: str) -> str:
        known = self._by_value.get((kind, value))
        if known is not None:
            return known
        n = self._counts[kind] = self._counts.get(kind, 0) + 1
        tag = f"[{kind}_{n}]"
        self.values[tag] = value
        self._by_value[(kind, value)] = tag
        return tag

    def redact(self, text: str) -> str:
        """``text`` with each piece of personal data replaced by its placeholder."""
        has_at = "@" in text
        if self.names is None and not has_at and _DIGIT.search(text) is None:
            return text  # every pattern's kind has an @ or a digit: most text is passed over
        spans: list[tuple[int, int, str]] = []
        for kind, pattern, valid in DETECTORS:
            if kind == "EMAIL" and not has_at:
                continue
            pos = 0
            while (m := pattern.search(text, pos)) is not None:
                start, end = m.span()
                if valid is not None:
                    end = _longest_valid(text, start, end, valid)
                if end <= start or any(s < end and start < e for s, e, _ in spans):
                    pos = start + 1  # not this one: a valid one may start inside it
                    continue
                spans.append((start, end, kind))
                pos = end
        if self.names is not None:
            for start, end in self.names(text):
                if 0 <= start < end <= len(text) and not any(
                    s < end and start < e for s, e, _ in spans
                ):
                    spans.append((start, end, NAME))
        if not spans:
            return text
        out: list[str] = []
        last = 0
        for start, end, kind in sorted(spans):
            out.append(text[last:start])
            out.append(self.placeholder(kind, text[start:end]))
            last = end
        out.append(text[last:])
        return "".join(out)

    def restore(self, text: str) -> str:
        """``text`` with every placeholder of this request put back to its value."""
        if "[" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self.values.get(m.group(), m.group()), text)

    def __bool__(self) -> bool:
        return bool(self.values)


@cache
def name_finder(path: str) -> NameFinder:
    """The names detector at ``path`` (``"package.module:function"``), imported once."""
    module, _, attr = path.partition(":")
    found = getattr(importlib.import_module(module), attr)
    if not callable(found):
        raise TypeError(f"{path} is not a function")
    finder: NameFinder = found
    return finder


def _longest_valid(text: str, start: int, end: int, valid: Callable[[str], bool]) -> int:
    """The end of the longest candidate from ``start`` that ``valid`` accepts, dropping
    space-separated groups from the right (a pattern may take in the number after an IBAN);
    ``start`` if none."""
    while end > start:
        if valid(text[start:end]):
            return end
        cut = text.rfind(" ", start, end)
        if cut <= start:
            return start
        end = cut
    return start


def redact_messages(messages: list[Any], vault: Vault) -> None:
    """Redact the text of chat messages in place (``ChatMessage`` models or dicts)."""
    for message in messages:
        content = _get(message, "content")
        if isinstance(content, str):
            _set(message, "content", vault.redact(content))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"] = vault.redact(part["text"])


def restore_choices(result: JSON, vault: Vault) -> JSON:
    """A chat answer with its placeholders put back (a new dict: the caller's copy; the
    answer as the upstream gave it stays as it was, for what logs it)."""
    out = dict(result)
    choices = []
    for choice in result.get("choices") or ():
        choice = dict(choice)
        message = choice.get("message")
        if isinstance(message, dict):
            message = dict(message)
            if isinstance(message.get("content"), str):
                message["content"] = vault.restore(message["content"])
            if message.get("tool_calls"):
                message["tool_calls"] = [_restore_call(c, vault) for c in message["tool_calls"]]
            choice["message"] = message
        if isinstance(choice.get("text"), str):  # a FIM / completions answer
            choice["text"] = vault.restore(choice["text"])
        choices.append(choice)
    out["choices"] = choices
    return out


def _restore_call(call: Any, vault: Vault) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = dict(call["function"])
    if isinstance(function.get("arguments"), str):
        function["arguments"] = vault.restore(function["arguments"])
    return {**call, "function": function}


class StreamRestorer:
    """Puts placeholders back in streamed deltas; a placeholder cut between two chunks is
    held back until it is whole (or the choice finishes)."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self._held: dict[int, str] = {}

    def chunk(self, chunk: JSON) -> None:
        """Restore one chunk in place."""
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) or index in self._held:
                    text = self._held.pop(index, "") + (content or "")
                    if not choice.get("finish_reason"):
                        partial = _PARTIAL.search(text)
                        if partial is not None:
                            self._held[index] = partial.group()
                            text = text[: partial.start()]
                    delta["content"] = self.vault.restore(text)
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                        function["arguments"] = self.vault.restore(function["arguments"])

    def rest(self, template: JSON) -> JSON | None:
        """A last chunk with what is still held (a stream that ended without finishing)."""
        if not self._held:
            return None
        choices = [
            {"index": i, "delta": {"content": self.vault.restore(text)}, "finish_reason": None}
            for i, text in sorted(self._held.items())
        ]
        self._held.clear()
        return {**template, "object": "chat.completion.chunk", "choices": choices}


def _get(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, dict) else getattr(message, name, None)


def _set(message: Any, name: str, value: Any) -> None:
    if isinstance(message, dict):
        message[name] = value
    else:
        setattr(message, name, value)
