"""The Redis side: the client manager (`manager`) and the Sentinel and Cluster topologies
(`topology`)."""

from core.redis_client.manager import RedisManager, redis_manager

__all__ = ["RedisManager", "redis_manager"]
