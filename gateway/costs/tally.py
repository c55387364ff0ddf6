"""What a stream generated, for its offline usage estimate, in bounded memory.

A stream's usage is estimated offline when the provider sent none, from the text it
generated. Keeping that text whole costs memory in proportion to the answer for as long as the
stream lives (a caller that reads slowly keeps it alive). ``TextTally`` keeps a running token
count instead: text accumulates in a tail, and once the tail passes ``FOLD_CHARS`` its head —
cut before a space, where the BPE tables' pre-tokenisation cuts anyway, so the count does not
change — is counted and dropped. The estimate is then the folded count plus the tail's.
"""

from __future__ import annotations

from gateway.costs.tokens import count_tokens

FOLD_CHARS = 48_000  # the largest tail kept uncounted, in characters
# Pieces kept apart before they are joined: a stream's text arrives a token at a time, and
# each piece held as its own string costs ~60 bytes beyond its characters.
JOIN_EVERY = 64


class TextTally:
    """One choice's generated text: tokens counted so far plus the text not counted yet."""

    __slots__ = ("_parts", "_size", "counted", "keep_all")

    def __init__(self, *, keep_all: bool = False) -> None:
        self.counted = 0  # tokens of the text folded away
        self.keep_all = keep_all  # keep the whole text (it is recorded, or cannot be counted)
        self._parts: list[str] = []
        self._size = 0

    def add(self, text: str) -> bool:
        """Append ``text``; True when the tail has grown enough to be folded."""
        if text:
            parts = self._parts
            parts.append(text)
            self._size += len(text)
            if len(parts) >= JOIN_EVERY:
                self._parts = ["".join(parts)]
        return not self.keep_all and self._size > FOLD_CHARS

    @property
    def tail(self) -> str:
        """The text not counted yet (all of it, unless folded)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    async def fold(self, family: str, model: str) -> None:
        """Count the tail's head with ``model``'s table and keep only the rest."""
        tail = self.tail
        cut = tail.rfind(" ", len(tail) // 2)
        if cut <= 0:
            cut = len(tail)  # no space: a cut anywhere changes the count by a token at most
        self.counted += await count_tokens(tail[:cut], family, model)
        rest = tail[cut:]
        self._parts = [rest] if rest else []
        self._size = len(rest)
