"""`@cached`: read-through caching of an async function's result."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypeVar

from core.cache.cache import Cache
from core.cache.keys import Key

__all__ = ["CachedFunction", "cached"]

P = ParamSpec("P")
R = TypeVar("R")

_INFER: Any = object()


class CachedFunction(Generic[P, R]):
    """An async function whose results are cached; also usable as a method.

    `key_for(*args, **kwargs)` gives the key a call uses; `invalidate(*args, **kwargs)` deletes
    that entry (raising `CacheUnavailable` if Redis was unreachable).
    """

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]],
        cache: Cache | Callable[[], Cache],
        ttl: float | None,
        key: Callable[..., Key] | None,
        group: str | Callable[..., str] | None,
        type_: Any,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError("@cached needs an async function")
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._cache = cache
        self._ttl = ttl
        self._key = key
        self._group = group
        self._type = type_
        self._signature = inspect.signature(fn)
        params = list(self._signature.parameters.values())
        # The instance or class a method is bound to is not part of the key: results are
        # assumed to depend on the arguments only (pass `key=` otherwise).
        self._skip_first = bool(params) and params[0].name in ("self", "cls")
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        # Signature.bind costs ~4 µs; a call passing every parameter positionally needs none.
        self._arity = len(params) if all(p.kind in positional for p in params) else -1
        self._name = f"{fn.__module__}.{fn.__qualname__}"

    def _resolve(self) -> Cache:
        return self._cache if isinstance(self._cache, Cache) else self._cache()

    def _return_type(self) -> Any:
        if self._type is _INFER:
            try:
                hint = typing.get_type_hints(self._fn).get("return", Any)
            except Exception as exc:
                # Silently caching untyped would return dicts on hits and models on misses.
                raise TypeError(
                    f"cannot resolve the return annotation of {self._name} ({exc}); "
                    "pass type_= to @cached"
                ) from exc
            self._type = None if hint is Any else hint
        return self._type

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> Key:
        """The cache key of one call: the custom key, or the function's name and its arguments."""
        if self._key is not None:
            return self._key(*args, **kwargs)
        if not kwargs and len(args) == self._arity:
            return (self._name, *(args[1:] if self._skip_first else args))
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())
        if self._skip_first:
            values = values[1:]
        return (self._name, *values)

    def _group_for(self, *args: Any, **kwargs: Any) -> str | None:
        group = self._group
        return group(*args, **kwargs) if callable(group) else group

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        cache = self._resolve()
        loader = functools.partial(self._fn, *args, **kwargs)
        return await cache.get_or_set(
            self.key_for(*args, **kwargs),
            loader,
            self._ttl,
            type_=self._return_type(),
            group=self._group_for(*args, **kwargs),
        )

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Delete the entry of this call; True if it existed."""
        return await self._resolve().delete(
            self.key_for(*args, **kwargs), group=self._group_for(*args, **kwargs)
        )

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return _BoundCached(self, obj)


class _BoundCached:
    """A `CachedFunction` bound to an instance, like a bound method."""

    __slots__ = ("__func__", "__self__")

    def __init__(self, func: CachedFunction[..., Any], obj: object) -> None:
        self.__func__ = func
        self.__self__ = obj

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self.__func__(self.__self__, *args, **kwargs)

    def key_for(self, *args: Any, **kwargs: Any) -> Key:
        """The cache key of one call."""
        return self.__func__.key_for(self.__self__, *args, **kwargs)

    async def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Delete the entry of this call; True if it existed."""
        return await self.__func__.invalidate(self.__self__, *args, **kwargs)


def cached(
    cache: Cache | Callable[[], Cache],
    *,
    ttl: float | None = None,
    key: Callable[..., Key] | None = None,
    group: str | Callable[..., str] | None = None,
    type_: Any = _INFER,
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
    """Cache an async function's results in `cache` (or the cache a zero-arg getter returns).

    The key is the function's module and qualified name plus its bound arguments (defaults
    applied, `self`/`cls` left out), injectively encoded; `key=` replaces it with your own
    (called with the same arguments) so `cache.get/delete` can address entries directly. Values
    are decoded as the return annotation unless `type_` is given (`None`: plain data).
    `group` (a name, or a function of the arguments) puts entries in an invalidation group.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
        return CachedFunction(fn, cache, ttl, key, group, type_)

    return decorate
