"""The fleet's host politeness in Redis (redis-py): one Lua script per decision.

Per host, three keys under ``docstokg:host:{HOST}:`` (a hash tag, so that in a
Redis Cluster the keys a script touches share a slot):

- ``cooldown``: exists while the host cools down (its TTL is what is left);
- ``next``: the Redis time (ms) before which no request may start (rate cap),
  expiring once it has passed;
- ``slots``: a sorted set of holders scored by the Redis time (ms) their
  slot lapses; renewed while held, dropped when lapsed, and the whole key
  expires ``slot_ttl_s`` after its last write, so a crashed process never
  holds a slot for longer than that.

Each decision is one script, which Redis runs atomically, on Redis's clock
(``TIME``): workers on machines whose clocks differ still agree.  Nothing
here needs persistence: after a Redis restart every host is simply ready,
which is safe (politeness is best effort; the ledger's leases live in the
ledger, see AGENTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Self, TypeVar

import redis

from docstokg.errors import ConfigurationError, TransientFetchError
from docstokg.redact import mask_url

KEY_PREFIX = "docstokg:host:"
_T = TypeVar("_T")

# KEYS: cooldown, next, slots.  ARGV: holder, max_concurrent (0: none),
# interval_ms (0: none), slot_ttl_ms.  Returns 0 (admitted), a wait in ms, or -1 (at cap).
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cooling = redis.call('PTTL', KEYS[1])
if cooling >= 0 then return math.max(cooling, 1) end
local cap = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
if interval > 0 then
  local nxt = tonumber(redis.call('GET', KEYS[2]) or '0')
  if nxt > now then return nxt - now end
end
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= cap then return -1 end
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[3], ttl)
end
if interval > 0 then
  redis.call('SET', KEYS[2], now + interval, 'PX', interval)
end
return 0
"""

# KEYS: cooldown.  ARGV: ms.  A longer cooldown already set stays.
_COOL_DOWN = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
"""

# KEYS: slots.  ARGV: slot_ttl_ms, holders...  Only slots still held are extended.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 0
"""


def _ms(seconds: float) -> int:
    """Whole milliseconds, at least 1 (Redis refuses a zero expiry)."""
    return max(1, math.ceil(seconds * 1000))


class RedisCooldownStore:
    """Per-host cooldowns, slots and rate shared through one Redis by every process."""

    def __init__(self, client: redis.Redis, *, where: str) -> None:
        self._client = client
        self.where = where
        self._admit = client.register_script(_ADMIT)
        self._cool_down = client.register_script(_COOL_DOWN)
        self._renew = client.register_script(_RENEW)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A store at ``url`` (``redis://host:6379/0``); nothing connects until it is used."""
        try:
            client = redis.Redis.from_url(
                url, socket_timeout=10, socket_connect_timeout=10, **options
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"redis_url {mask_url(url)!r} is not a Redis URL ({exc}); write it as "
                "redis://host:6379/0 (rediss:// for TLS, unix:///path.sock for a socket)"
            ) from exc
        return cls(client, where=f"Redis at {mask_url(url)}")

    @staticmethod
    def _keys(host: str) -> tuple[str, str, str]:
        """The host's three keys; ``{host}`` is a hash tag: one slot in a Redis Cluster."""
        base = f"{KEY_PREFIX}{{{host}}}:"
        return base + "cooldown", base + "next", base + "slots"

    def admit(
        self,
        host: str,
        holder: str,
        *,
        max_concurrent: int | None,
        interval_s: float | None,
        slot_ttl_s: float,
    ) -> float:
        """See :meth:`~docstokg.download.politeness.CooldownStore.admit` (negative: at the cap)."""
        interval_ms = 0 if interval_s is None else _ms(interval_s)
        args: list[str | int] = [holder, max_concurrent or 0, interval_ms, _ms(slot_ttl_s)]
        keys = list(self._keys(host))
        waited = int(self._guarded(lambda: self._admit(keys=keys, args=args)))
        return -1.0 if waited < 0 else waited / 1000

    def leave(self, host: str, holder: str) -> None:
        slots = self._keys(host)[2]
        self._guarded(lambda: self._client.zrem(slots, holder))

    def renew(self, slots: Sequence[tuple[str, str]], slot_ttl_s: float) -> None:
        by_host: dict[str, list[str]] = {}
        for host, holder in slots:
            by_host.setdefault(host, []).append(holder)
        for host, holders in by_host.items():
            self._renew_host(self._keys(host)[2], [_ms(slot_ttl_s), *holders])

    def _renew_host(self, key: str, args: list[str | int]) -> None:
        self._guarded(lambda: self._renew(keys=[key], args=args))

    def cool_down(self, host: str, seconds: float) -> None:
        key = self._keys(host)[0]
        self._guarded(lambda: self._cool_down(keys=[key], args=[_ms(seconds)]))

    def cooldown_left(self, host: str) -> float:
        key = self._keys(host)[0]
        left = int(self._guarded(lambda: self._client.pttl(key)))
        return max(0, left) / 1000

    def close(self) -> None:
        self._client.close()

    def _guarded(self, call: Callable[[], _T]) -> _T:
        """``call()``; a Redis that fails is a passing error, named, with what to check."""
        try:
            return call()
        except redis.RedisError as exc:
            raise TransientFetchError(
                f"the host-politeness store ({self.where}) failed: {type(exc).__name__}: {exc}; "
                "check that Redis is up and redis_url is right (transient: retried later)"
            ) from exc
