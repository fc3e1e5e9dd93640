"""Lua scripts of the cache: each runs atomically in one round trip.

Lock values are random hex tokens. `DELETE` marks a held lock by prefixing "!" to its token, which
tells the filler holding it that the value it loaded predates the delete and must not be stored.
"""

from __future__ import annotations

__all__ = ["DELETE", "ENSURE_VERSION", "RELEASE", "STORE_RELEASE"]

# Release only our own lock: a holder whose lock expired must not delete its successor's.
RELEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or holder == '!' .. ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Store the entry and release our lock in one round trip. If our lock expired and nobody holds it,
# store anyway; if another filler took over, or a delete marked our lock, store nothing.
STORE_RELEASE = """
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[3] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if holder then redis.call('DEL', KEYS[2]) end
  return 1
end
if holder == '!' .. ARGV[3] then redis.call('DEL', KEYS[2]) end
return 0
"""
# Delete the entry and mark a fill in progress anywhere as outdated.
DELETE = """
local holder = redis.call('GET', KEYS[2])
if holder and string.sub(holder, 1, 1) ~= '!' then
  redis.call('SET', KEYS[2], '!' .. holder, 'KEEPTTL')
end
return redis.call('DEL', KEYS[1])
"""
# A group's version is created on first fill; values never carry the "missing" version, so an
# evicted version key invalidates the group instead of resurrecting old entries.
ENSURE_VERSION = """
local v = redis.call('GET', KEYS[1])
if not v then v = ARGV[1]; redis.call('SET', KEYS[1], v) end
return v
"""
