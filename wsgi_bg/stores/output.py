"""A job's output as every store keeps it: UTF-8, bounded to a head and a
tail cut at character boundaries, with a marker line where output was
dropped.

Pure functions, run wherever output is handled: the supervisor counts what it
relays with :func:`encode_output` (:mod:`wsgi_bg.capture`); the default
store's :class:`~wsgi_bg.stores.memory.MemoryStore` and the Redis store
(:mod:`wsgi_bg.stores.redis`, whose Lua scripts follow the same rules) cut and
mark with the others. One place, so that every store shows a long job's
output the same way.
"""

from __future__ import annotations

import re


def dropped_marker(dropped: int, limit: int) -> str:
    """The line that stands where output was dropped (every store writes it)."""
    return (f"\n[… {dropped} bytes of output dropped: the job wrote more than"
            f" max_output_bytes={limit} …]\n")


def _is_continuation(byte: int) -> bool:
    return 0x80 <= byte < 0xC0


def head_cut(data: bytes | bytearray, size: int) -> int:
    """Where a head of at most ``size`` bytes ends without splitting a character."""
    cut = min(size, len(data))
    while 0 < cut < len(data) and _is_continuation(data[cut]):
        cut -= 1
    return cut


def tail_cut(data: bytes | bytearray, start: int) -> int:
    """The first character boundary at or after ``start``."""
    while start < len(data) and _is_continuation(data[start]):
        start += 1
    return start


def encode_output(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (which UTF-8 cannot hold) becomes
    U+FFFD, as the decoder makes of any undecodable byte."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


_SURROGATE = re.compile("[\ud800-\udfff]")


def decode(data: bytes | bytearray) -> str:
    """``data`` as text; an undecodable byte becomes U+FFFD."""
    return bytes(data).decode("utf-8", "replace")
