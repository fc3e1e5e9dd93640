"""Cache layer on Redis: read-through, stampede-safe, fail-open, with injective capped keys.

cache = Cache(redis_client, prefix=settings.redis.key_prefix, settings=settings.cache)
user = await cache.get_or_set(("user", user_id), load_user, ttl=60, type_=User)

@cached(lambda: cache, ttl=60, group="users")
async def get_user(user_id: int) -> User: ...

await cache.invalidate_group("users")
"""

from core.cache.cache import Cache
from core.cache.codec import Codec, JsonCodec, MsgspecCodec, codec_for
from core.cache.decorator import CachedFunction, cached
from core.cache.errors import CacheError, CacheUnavailable, UnencodableValue
from core.cache.hooks import CacheBreaker, CacheEvent, CacheStats, MetricsHook
from core.cache.keys import Key, KeySpace, encode_key
from core.cache.local_tier import LocalTier
from core.cache.tracking import InvalidationListener

__all__ = [
    "Cache",
    "CacheBreaker",
    "CacheError",
    "CacheEvent",
    "CacheStats",
    "CacheUnavailable",
    "CachedFunction",
    "Codec",
    "InvalidationListener",
    "JsonCodec",
    "Key",
    "KeySpace",
    "LocalTier",
    "MetricsHook",
    "MsgspecCodec",
    "UnencodableValue",
    "cached",
    "codec_for",
    "encode_key",
]
