"""Value codecs: how entries are serialised. JSON by default; msgspec MessagePack as an option.

Decoding takes the declared type, so pydantic models, dataclasses, datetimes, UUIDs and the like
come back as the same type instead of being named by a tag in the stored bytes (stored bytes never
choose which class gets built). Pickle is never used.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import pydantic_core
from pydantic import BaseModel, TypeAdapter

from core.cache.errors import UnencodableValue

__all__ = ["Codec", "JsonCodec", "MsgspecCodec", "codec_for"]


@runtime_checkable
class Codec(Protocol):
    """Serialises cache values. `decode` may raise anything on bad input: that is a miss."""

    codec_id: int
    """1-255, stored with every entry so entries written by another codec read as misses."""

    def encode(self, value: Any) -> bytes:
        """Serialise `value`; raise `UnencodableValue` when it cannot be."""
        ...

    def decode(self, data: bytes, type_: Any = None) -> Any:
        """Deserialise `data`, validated as `type_` when given, else as plain data."""
        ...


class _AdapterCache:
    """One pydantic `TypeAdapter` per declared type (building one costs far more than using it)."""

    def __init__(self) -> None:
        self._adapters: dict[Any, TypeAdapter[Any]] = {}

    def get(self, type_: Any) -> TypeAdapter[Any]:
        try:
            return self._adapters[type_]
        except KeyError:
            adapter: TypeAdapter[Any] = TypeAdapter(type_)
            self._adapters[type_] = adapter
            return adapter
        except TypeError:  # unhashable type expression
            return TypeAdapter(type_)


class JsonCodec:
    """JSON through pydantic-core: fast, always installed, understands models and dataclasses."""

    codec_id = 1

    def __init__(self) -> None:
        self._adapters = _AdapterCache()

    def encode(self, value: Any) -> bytes:
        """JSON bytes; computed fields are left out so strict models validate them back."""
        try:
            return pydantic_core.to_json(value, round_trip=True)
        except pydantic_core.PydanticSerializationError as exc:
            raise UnencodableValue(f"cannot encode {type(value).__name__} as JSON: {exc}") from None

    def decode(self, data: bytes, type_: Any = None) -> Any:
        """Plain JSON data, or an instance of `type_` validated from it."""
        if type_ is None:
            return pydantic_core.from_json(data)
        return self._adapters.get(type_).validate_json(data)


def _to_builtins(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(round_trip=True)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def _from_builtins(type_: Any, value: Any) -> Any:
    if isinstance(type_, type) and issubclass(type_, BaseModel):
        return type_.model_validate(value)
    raise NotImplementedError(f"cannot decode {type_!r}")


class MsgspecCodec:
    """MessagePack through msgspec (needs `msgspec` installed); pydantic models go via dicts.

    MessagePack integers are 64-bit: larger ones raise `UnencodableValue`.
    """

    codec_id = 2

    def __init__(self) -> None:
        try:
            import msgspec
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("the msgspec codec needs the msgspec package installed") from None
        self._msgspec = msgspec
        self._encoder = msgspec.msgpack.Encoder(enc_hook=_to_builtins)
        self._plain = msgspec.msgpack.Decoder()
        self._typed: dict[Any, Any] = {}

    def encode(self, value: Any) -> bytes:
        """MessagePack bytes."""
        try:
            data: bytes = self._encoder.encode(value)
        except (TypeError, OverflowError, NotImplementedError, self._msgspec.EncodeError) as exc:
            raise UnencodableValue(f"cannot encode {type(value).__name__}: {exc}") from None
        return data

    def decode(self, data: bytes, type_: Any = None) -> Any:
        """Plain data, or an instance of `type_` (msgspec validates; models use pydantic)."""
        if type_ is None:
            return self._plain.decode(data)
        try:
            decoder = self._typed[type_]
        except KeyError:
            decoder = self._typed[type_] = self._decoder(type_)
        except TypeError:  # unhashable type expression
            decoder = self._decoder(type_)
        return decoder.decode(data)

    def _decoder(self, type_: Any) -> Any:
        return self._msgspec.msgpack.Decoder(type_, dec_hook=_from_builtins)


def codec_for(name: str) -> Codec:
    """The codec named in settings (`json` or `msgspec`)."""
    if name == "json":
        return JsonCodec()
    if name == "msgspec":
        return MsgspecCodec()
    raise ValueError(f"unknown cache codec {name!r}; use 'json' or 'msgspec'")
