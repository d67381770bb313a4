"""adcache: typed client of the adcache Redis Functions library.

`adcache.AdCache` wraps a redis-py `Redis` or `RedisCluster`; `adcache.aio.AdCache` is its asyncio
twin. Each domain is a facade with the same name on both: `cache.sessions`, ...
"""

from adcache._core import Call
from adcache._generated import (
    ERRORS,
    LIBRARY_VERSION,
    AdCacheError,
    AlreadyExistsError,
    ArityError,
    BadArgumentError,
    BadKeyError,
    CorruptStateError,
    CrossSlotError,
    DurabilityError,
    InvalidStateError,
    LibraryMissingError,
    LibraryVersionError,
    LimitExceededError,
    NotFoundError,
    VersionConflictError,
)
from adcache.client import AdCache

__all__ = [
    "ERRORS",
    "LIBRARY_VERSION",
    "AdCache",
    "AdCacheError",
    "AlreadyExistsError",
    "ArityError",
    "BadArgumentError",
    "BadKeyError",
    "Call",
    "CorruptStateError",
    "CrossSlotError",
    "DurabilityError",
    "InvalidStateError",
    "LibraryMissingError",
    "LibraryVersionError",
    "LimitExceededError",
    "NotFoundError",
    "VersionConflictError",
]
