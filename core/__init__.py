"""dualcore: a framework-agnostic async core for PostgreSQL and Redis services.

The package is the public API, as in the seed design:

    from core import Base, Settings, get_settings, db_manager, redis_manager, lifespan

Names load on first use, so `import core` stays cheap and imports neither SQLAlchemy nor
redis-py until one of their names is asked for.
"""

# Not `typing.TYPE_CHECKING`: importing typing alone would triple the cost of `import core`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from core.cache import Cache, CacheError, CacheUnavailable, cached
    from core.config import Settings, get_settings
    from core.database import DatabaseManager, ReadOnlySessionError, db_manager
    from core.errors import ResourceClosedError
    from core.health import HealthRegistry, HealthReport
    from core.models import Base, TimestampMixin, UUIDPrimaryKeyMixin
    from core.redis_client import RedisManager, redis_manager
    from core.resilience import CircuitBreaker, CircuitOpenError, RetryPolicy, retry
    from core.runtime import Core, DependencyUnavailable, combine_lifespans, lifespan

__version__ = "0.1.0"

_HOMES = {
    "Base": "core.models",
    "TimestampMixin": "core.models",
    "UUIDPrimaryKeyMixin": "core.models",
    "Settings": "core.config",
    "get_settings": "core.config",
    "DatabaseManager": "core.database",
    "ReadOnlySessionError": "core.database",
    "db_manager": "core.database",
    "RedisManager": "core.redis_client",
    "redis_manager": "core.redis_client",
    "Core": "core.runtime",
    "lifespan": "core.runtime",
    "combine_lifespans": "core.runtime",
    "DependencyUnavailable": "core.runtime",
    "Cache": "core.cache",
    "cached": "core.cache",
    "CacheError": "core.cache",
    "CacheUnavailable": "core.cache",
    "CircuitBreaker": "core.resilience",
    "CircuitOpenError": "core.resilience",
    "RetryPolicy": "core.resilience",
    "retry": "core.resilience",
    "HealthRegistry": "core.health",
    "HealthReport": "core.health",
    "ResourceClosedError": "core.errors",
}

__all__ = [
    "Base",
    "Cache",
    "CacheError",
    "CacheUnavailable",
    "CircuitBreaker",
    "CircuitOpenError",
    "Core",
    "DatabaseManager",
    "DependencyUnavailable",
    "HealthRegistry",
    "HealthReport",
    "ReadOnlySessionError",
    "RedisManager",
    "ResourceClosedError",
    "RetryPolicy",
    "Settings",
    "TimestampMixin",
    "UUIDPrimaryKeyMixin",
    "__version__",
    "cached",
    "combine_lifespans",
    "db_manager",
    "get_settings",
    "lifespan",
    "redis_manager",
    "retry",
]


def __getattr__(name: str) -> "Any":
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    # The builtin, not importlib: importing importlib alone would double `import core`'s cost.
    value = getattr(__import__(home, fromlist=[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
