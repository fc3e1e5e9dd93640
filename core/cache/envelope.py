"""The stored form of one entry: a fixed binary header in front of the codec's payload.

Header (little endian): magic `dc 01`, codec id (u8), logical expiry as Unix time (f64), load
duration in seconds (f32, for early refresh), group version length (u8), then the version bytes.
Anything that does not parse (foreign or corrupt bytes, another codec) is reported as `None`.
"""

from __future__ import annotations

import hashlib
import struct

__all__ = ["normalise_version", "pack", "unpack"]

_MAGIC = b"\xdc\x01"
_HEADER = struct.Struct("<2sBdfB")
_SIZE = _HEADER.size
_MAX_VERSION = 255

Entry = tuple[float, float, bytes, bytes]


def pack(codec_id: int, expiry: float, delta: float, version: bytes, payload: bytes) -> bytes:
    """Frame `payload` with its metadata."""
    if len(version) > _MAX_VERSION:
        # Version tokens are ours and short; a foreign long one still needs a stable identity.
        version = hashlib.sha256(version).digest()
    return _HEADER.pack(_MAGIC, codec_id, expiry, delta, len(version)) + version + payload


def unpack(raw: bytes, codec_id: int) -> Entry | None:
    """(expiry, delta, version, payload), or None when `raw` is not an entry of this codec."""
    if not raw.startswith(_MAGIC) or len(raw) < _SIZE:
        return None
    _, cid, expiry, delta, vlen = _HEADER.unpack_from(raw)
    end = _SIZE + vlen
    if cid != codec_id or len(raw) < end:
        return None
    return expiry, delta, raw[_SIZE:end], raw[end:]


def normalise_version(token: bytes | str | None) -> bytes | None:
    """A group version token as bytes, hashed like `pack` does when it is too long."""
    if token is None:
        return None
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).digest() if len(raw) > _MAX_VERSION else raw
