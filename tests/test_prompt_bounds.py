"""The prompt-token bounds of non-text content parts that budget reservations rely on,
checked against the providers' documented examples."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from gateway.costs.catalog import Price
from gateway.costs.media import image_size, media_token_bound


def png_head(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + crc


def jpeg_head(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0


def image_part(head: bytes, detail: str | None = None) -> dict[str, Any]:
    image = {"url": "data:image/png;base64," + base64.b64encode(head).decode()}
    if detail is not None:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def bound(model: str, family: str = "openai") -> Callable[[dict[str, Any]], int]:
    return media_token_bound(
        Price(family=family, model=model, input=Decimal(1), context_window=128_000)
    )


def test_image_dimensions_are_read_from_png_gif_and_jpeg_headers():
    assert image_size(png_head(1024, 768)) == (1024, 768)
    assert image_size(b"GIF89a" + struct.pack("<HH", 300, 20)) == (300, 20)
    assert image_size(jpeg_head(640, 480)) == (640, 480)
    assert image_size(b"not an image") is None


@pytest.mark.parametrize(
    ("size", "detail", "tokens"),
    [
        ((1024, 1024), "high", 765),  # OpenAI's examples: 4 tiles x 170 + 85
        ((2048, 4096), "high", 1105),  # scaled to 768 x 1536: 6 tiles
        ((2048, 4096), "low", 85),
        ((1024, 1024), None, 765),  # auto counts as high
    ],
)
def test_gpt_4o_image_bound_follows_openais_tile_rule(size, detail, tokens):
    part = image_part(png_head(*size), detail)
    assert bound("gpt-4o")(part) == tokens


def test_image_by_address_reserves_the_largest_image_of_the_rule():
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    assert bound("gpt-4o")(part) == 85 + 8 * 170  # 2048 x 768: 4 x 2 tiles
    assert bound("gpt-4o-mini")(part) == 2833 + 8 * 5667
    assert bound("gpt-4.1-mini")(part) == 2489  # 1536 patches x 1.62


def test_unknown_model_reserves_the_largest_rule_and_at_most_its_window():
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    assert bound("some-model", family="other")(part) == 2833 + 8 * 5667
    assert bound("gpt-4o")({"type": "file", "file": {"file_id": "file-abc"}}) == 128_000


def test_audio_is_bounded_by_its_duration():
    wav = (
        b"RIFF"
        + struct.pack("<I", 0)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
    )
    clip = wav + b"data" + struct.pack("<I", 160_000) + bytes(160_000)  # 10 s
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode()}}
    assert 320 <= bound("gpt-4o")(part) <= 330  # 10 s x 32 tokens, header included
    compressed = {"type": "input_audio", "input_audio": {"data": "A" * 4000, "format": "mp3"}}
    assert bound("gpt-4o")(compressed) >= 3000 / 750 * 32  # 3000 bytes at 6 kbit/s
