"""Upper bounds of the prompt tokens a non-text content part can take: images, audio, files.

Budgets reserve a request's worst case before it is sent, so every part must count for at
least what the provider bills for it. Text is bounded by its UTF-8 size (a token is at least
one byte); the parts here are bounded by the providers' documented rules:

- Images (``image_url``). OpenAI, "Images and vision — calculating costs"
  (https://platform.openai.com/docs/guides/images-vision#calculating-costs): tile models
  (gpt-4o, gpt-4.1, gpt-5, o1/o3, gpt-4o-mini) bill ``base`` at ``detail: low``; otherwise the
  image is fitted into 2048x2048, its shortest side scaled down to 768 px, and each 512 px tile
  costs ``tile`` tokens plus ``base`` (gpt-4o: 85 + 170 per tile; at most 8 tiles, 2048x768).
  Patch models (gpt-4.1-mini/nano, gpt-5-mini/nano, o4-mini) bill 32 px patches, at most 1536,
  times a multiplier. Mistral (https://docs.mistral.ai/capabilities/vision/) bills a token per
  image patch plus one per row; the bound uses 14 px patches and a 1540 px longest side, the
  smallest patch and largest size among its vision models. The dimensions are read from the
  header of a ``data:`` URL; an image given by address has unknown dimensions, so it reserves
  the rule's ceiling (its largest image), for any detail but ``low``.
- Audio (``input_audio``): its duration, bounded from its size — the byte rate of a PCM WAV
  header, else a floor of 750 bytes a second (6 kbit/s, below any bitrate MP3 encodes) — at
  ``AUDIO_TOKENS_PER_SECOND``, above every documented rate (OpenAI: 10 a second, "1 token per
  100 ms" of user audio; Mistral Voxtral: 12.5).
- Files (``file``, ``document_url``): one token per byte of the decoded file; a file known
  only by id or address reserves the model's context window.

Every bound is capped at the model's context window (no prompt can be larger); a part of an
unknown type counts its JSON size, as text would.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from gateway.costs.catalog import Price
from gateway.wire import JSON

AUDIO_TOKENS_PER_SECOND = 32
AUDIO_MIN_BYTES_PER_SECOND = 750
DEFAULT_CONTEXT_WINDOW = 1_048_576  # for a model whose window the catalog does not give
_HEADER_CHARS = 1 << 16  # base64 characters decoded to find an image's dimensions

Size = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Tiles:
    """OpenAI's tile rule: ``base`` + ``tile`` per 512 px tile (``base`` alone at low)."""

    base: int
    tile: int

    def tokens(self, size: Size | None, detail: str) -> int:
        if detail == "low":
            return self.base
        width, height = size or (2048, 768)  # the most tiles any image can take: 4 x 2
        fit = min(1.0, 2048 / max(width, height))
        scale = fit * min(1.0, 768 / (min(width, height) * fit))
        tiles = math.ceil(width * scale / 512) * math.ceil(height * scale / 512)
        return self.base + self.tile * tiles


@dataclass(frozen=True, slots=True)
class Patches:
    """OpenAI's patch rule: 32 px patches, at most 1536, times ``multiplier``."""

    multiplier: float

    def tokens(self, size: Size | None, detail: str) -> int:
        patches = 1536
        if size is not None:
            patches = min(patches, math.ceil(size[0] / 32) * math.ceil(size[1] / 32))
        return math.ceil(patches * self.multiplier)


@dataclass(frozen=True, slots=True)
class RowPatches:
    """Mistral's rule: a token per ``patch`` px square and one per row, longest side at most
    ``longest`` px."""

    patch: int
    longest: int

    def tokens(self, size: Size | None, detail: str) -> int:
        w, h = size or (self.longest, self.longest)
        fit = min(1.0, self.longest / max(w, h))
        rows = math.ceil(h * fit / self.patch)
        return rows * math.ceil(w * fit / self.patch) + rows


ImageRule = Tiles | Patches | RowPatches

# OpenAI models by name prefix, the most specific first (the page cited above).
_OPENAI_RULES: tuple[tuple[str, ImageRule], ...] = (
    ("gpt-4o-mini", Tiles(2833, 5667)),
    ("gpt-4.1-mini", Patches(1.62)),
    ("gpt-5-mini", Patches(1.62)),
    ("gpt-4.1-nano", Patches(2.46)),
    ("gpt-5-nano", Patches(2.46)),
    ("o4-mini", Patches(1.72)),
    ("gpt-5", Tiles(70, 140)),
    ("o1", Tiles(75, 150)),
    ("o3", Tiles(75, 150)),
    ("computer-use", Tiles(65, 129)),
    ("gpt-4", Tiles(85, 170)),  # gpt-4o, gpt-4.1, gpt-4.5, gpt-4-turbo
)
_MISTRAL_RULE = RowPatches(patch=14, longest=1540)
_ALL_RULES: tuple[ImageRule, ...] = (*(r for _, r in _OPENAI_RULES), _MISTRAL_RULE)


def image_rules(price: Price) -> tuple[ImageRule, ...]:
    """The rules that may bill an image for ``price``'s model (all of them when unknown)."""
    model = price.model.lower()
    if price.family in ("openai", "azure"):
        for prefix, rule in _OPENAI_RULES:
            if model.startswith(prefix):
                return (rule,)
    if price.family in ("mistral", "azure-ai"):
        return (_MISTRAL_RULE,)
    return _ALL_RULES


def media_token_bound(price: Price) -> Callable[[JSON], int]:
    """A function bounding the prompt tokens of one non-text content part on ``price``'s model."""
    rules = image_rules(price)
    window = price.context_window or DEFAULT_CONTEXT_WINDOW

    def bound(part: JSON) -> int:
        kind = part.get("type")
        if kind == "image_url":
            tokens = _image_tokens(part.get("image_url"), rules)
        elif kind == "input_audio":
            tokens = _audio_tokens(part.get("input_audio"))
        elif kind in ("file", "document_url"):
            tokens = _file_tokens(part.get(kind), window)
        else:
            tokens = len(orjson.dumps(part))
        return min(tokens, window)

    return bound


# -- images ------------------------------------------------------------------------------------


def _image_tokens(image: object, rules: tuple[ImageRule, ...]) -> int:
    url = image.get("url") if isinstance(image, dict) else image
    detail = image.get("detail") if isinstance(image, dict) else None
    size = image_size(_data_url_bytes(url, _HEADER_CHARS)) if isinstance(url, str) else None
    return max(rule.tokens(size, str(detail or "auto")) for rule in rules)


def image_size(head: bytes | None) -> Size | None:
    """Width and height from the start of a PNG, GIF, WebP or JPEG file (None if unknown)."""
    if not head:
        return None
    size: Size | None = None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        size = struct.unpack(">II", head[16:24])
    elif head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        size = struct.unpack("<HH", head[6:10])
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        size = _webp_size(head)
    elif head[:2] == b"\xff\xd8":
        size = _jpeg_size(head)
    if size is None or min(size) <= 0:
        return None
    return size


def _webp_size(head: bytes) -> Size | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(head) >= 30:
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _jpeg_size(head: bytes) -> Size | None:
    """The frame size from the first SOF marker (within the bytes at hand)."""
    i = 2
    while i + 9 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", head[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


# -- audio and files ---------------------------------------------------------------------------


def _audio_tokens(audio: object) -> int:
    data = audio.get("data") if isinstance(audio, dict) else None
    if not isinstance(data, str):
        return len(orjson.dumps(audio))
    size = _decoded_size(data)
    rate = _wav_byte_rate(_b64_prefix(data, 64)) or AUDIO_MIN_BYTES_PER_SECOND
    return math.ceil(size / rate * AUDIO_TOKENS_PER_SECOND)


def _wav_byte_rate(head: bytes | None) -> int | None:
    """The byte rate of uncompressed PCM WAV (format 1), which fixes its duration."""
    if head is None or len(head) < 32 or head[:4] != b"RIFF" or head[8:16] != b"WAVEfmt ":
        return None
    (audio_format,) = struct.unpack("<H", head[20:22])
    (byte_rate,) = struct.unpack("<I", head[28:32])
    return byte_rate if audio_format == 1 and byte_rate > 0 else None


def _file_tokens(file: object, window: int) -> int:
    data = None
    if isinstance(file, dict):
        data = file.get("file_data")
    elif isinstance(file, str) and file.startswith("data:"):
        data = file
    if not isinstance(data, str):
        return window  # known by id or address only: its size is unknown here
    return _decoded_size(data)


# -- base64 ------------------------------------------------------------------------------------

_DATA_URL = re.compile(r"data:[^,]{0,200}?;base64,", re.IGNORECASE)


def _payload(data: str) -> str:
    """The base64 text of a ``data:`` URL, or ``data`` itself."""
    match = _DATA_URL.match(data)
    return data[match.end() :] if match else data


def _decoded_size(data: str) -> int:
    """Bytes that base64 ``data`` (or a data URL) decodes to, at most."""
    return len(_payload(data)) * 3 // 4 + 3


def _b64_prefix(data: str, chars: int) -> bytes | None:
    text = _payload(data)[:chars]
    text = text[: len(text) - len(text) % 4]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None


def _data_url_bytes(url: str, chars: int) -> bytes | None:
    """The first bytes of a ``data:`` URL's payload (None for an address)."""
    if not _DATA_URL.match(url):
        return None
    return _b64_prefix(url, chars)
