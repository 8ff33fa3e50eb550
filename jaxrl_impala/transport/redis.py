"""The Redis transport: the same unroll queue and parameter store as `shm.py`, on a Redis server,
so actors can run on other hosts and join a running learner.

Keys (``P`` is ``transport.prefix``; the first two are the public contract)::

    P:unrolls   LIST    encoded unroll frames, oldest at the head (RPUSH in, LPOP out)
    P:params    HASH    {"version": int, "frame": encoded params}, replaced by one HSET
    P:learner   HASH    the learner's heartbeat (pid, host, queue bound, overflow policy,
                        largest frame), with a TTL the learner refreshes every 0.5 s
    P:stats     HASH    {"put": n, "dropped": n}, counted by the push script
    P:closed    STRING  written (with a TTL) by the learner when it closes the queue

Pushes and the param fetch are server-side Lua scripts, so each is one round trip and atomic:

* push: refuse if ``P:closed`` exists or no learner is alive (``P:learner`` missing); under
  ``block``, refuse while the list holds ``bound`` frames; else RPUSH, and under ``drop_oldest``
  LTRIM back to ``bound`` and add exactly the number trimmed to ``P:stats dropped``. The bound
  is on the whole list (``actors.num * slots_per_actor``), not per actor: in Redis mode actor
  ids are only metadata, so remote actors may join with any id.
* fetch: read ``version`` alone; send the frame only when it is newer than the caller's.

The learner pops up to ``batch`` frames per round trip (``LPOP key count``) into a small local
buffer and BLPOPs when the list is empty. Every frame is validated by `codec.decode` against
the learner's `FrameSpec`; a frame that fails (garbage, truncated, wrong dtype or shape, a
pickle) is dropped and counted in ``frames_rejected``, never raised, never unpickled.

Reconnects: every handle wraps its commands in `_Link`, which on a connection error marks the
server down and retries after an exponential backoff (50 ms doubling to 2 s). While the
server is down the learner's `get` returns None, `publish` keeps the newest params and a
background thread re-sends them (and the heartbeat) once the server is back, and an actor's
`put` keeps retrying until its timeout. An actor's `owner_alive` turns False only when no
learner heartbeat has been seen for `DEFAULT_STALE_AFTER` seconds, so actors ride out a short
Redis restart but exit when the learner is gone for good; ``closed`` reflects ``P:closed``.

URLs are whatever `redis.Redis.from_url` takes (``redis://``, ``rediss://`` for TLS,
``unix://``; user, password and db in the URL). A bad scheme, an unreachable server and
rejected credentials are one-line `RedisTransportError`s naming the URL, password masked.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import socket
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from jaxrl_impala.transport import codec
from jaxrl_impala.transport.base import Closing
from jaxrl_impala.transport.codec import Frame, FrameError, FrameSpec, FrameTooLargeError

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_STALE_AFTER",
    "RedisParamStore",
    "RedisProducer",
    "RedisQueue",
    "RedisTransportError",
    "connect",
    "mask_url",
]

DEFAULT_PREFIX = "jaxrl_impala"
DEFAULT_STALE_AFTER = 20.0  # seconds without a learner heartbeat before actors give up
HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_TTL_MS = 5000
CLOSED_TTL_MS = 120_000  # the closed marker outlives the run long enough for actors to see it
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0  # reconnect backoff (seconds)
POLL_MIN, POLL_MAX = 0.001, 0.01  # a blocked put polls for room this often
STATUS_EVERY = 0.25  # actors refresh `closed` / learner liveness at most this often
BLOCK_MAX = 1.0  # longest single BLPOP of the consumer
CONNECT_TIMEOUT = 3.0
SOCKET_TIMEOUT = 10.0

# Push / room status codes returned by the scripts.
_OK, _CLOSED, _NO_LEARNER, _FULL, _TOO_LARGE = 0, -1, -2, -3, -4

_PUSH_LUA = """
if redis.call('EXISTS', KEYS[4]) == 1 then return {-1, 0} end
local cfg = redis.call('HMGET', KEYS[3], 'bound', 'drop', 'max_bytes')
if not cfg[1] then return {-2, 0} end
local bound = tonumber(cfg[1])
local max_bytes = tonumber(cfg[3])
if max_bytes and string.len(ARGV[1]) > max_bytes then return {-4, max_bytes} end
local n = redis.call('LLEN', KEYS[1])
if n >= bound and cfg[2] ~= '1' then return {-3, n} end
n = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'put', 1)
local dropped = 0
if n > bound then
  dropped = n - bound
  redis.call('LTRIM', KEYS[1], dropped, -1)
  redis.call('HINCRBY', KEYS[2], 'dropped', dropped)
end
return {0, dropped}
"""

_ROOM_LUA = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local cfg = redis.call('HMGET', KEYS[2], 'bound', 'drop')
if not cfg[1] then return -2 end
if cfg[2] ~= '1' and redis.call('LLEN', KEYS[1]) >= tonumber(cfg[1]) then return -3 end
return 0
"""

_FETCH_LUA = """
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return false end
if tonumber(v) <= tonumber(ARGV[1]) then return {v} end
return {v, redis.call('HGET', KEYS[1], 'frame')}
"""

_REPUBLISH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'frame', ARGV[2])
return 1
"""

# Claim the prefix for a new learner: refuse if another one is alive, else start clean.
# KEYS: learner, closed, unrolls, stats, params; ARGV: ttl_ms, then field/value pairs.
_CLAIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HMGET', KEYS[1], 'pid', 'host')
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""

# Refresh the heartbeat unless another learner took the prefix over (its token differs).
_HEARTBEAT_LUA = """
local token = redis.call('HGET', KEYS[1], 'token')
if token and token ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

_TRANSIENT: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # also AuthenticationError and BusyLoadingError
    RedisTimeoutError,
    ReadOnlyError,  # a replica during failover
    ConnectionError,
    TimeoutError,
)
try:  # redis-py >= 5
    from redis.exceptions import OutOfMemoryError

    _TRANSIENT += (OutOfMemoryError,)
except ImportError:  # pragma: no cover
    pass


class RedisTransportError(RuntimeError):
    """The Redis server cannot be used (bad URL, unreachable, bad credentials, prefix in use).
    The message is one line and names the URL with its password masked."""


class _Unavailable(Exception):
    """Internal: the server is down (or in its reconnect backoff window)."""


def mask_url(url: str) -> str:
    """`url` with any password replaced by ``***`` (in the netloc and in ``?password=``)."""
    text = str(url)
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
    except ValueError:
        netloc = ""
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        text = text.replace(netloc, f"{userinfo}@{host}", 1)
    return re.sub(r"(?i)(password=)[^&#]*", r"\1***", text)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _log(message: str) -> None:
    print(f"redis transport: {message}", file=sys.stderr, flush=True)


def connect(url: str, *, client_name: str | None = None, check: bool = True) -> redis.Redis:
    """A client for `url` with no hidden retries (reconnects are ours, see `_Link`).

    With `check`, PINGs once and turns every failure into a one-line `RedisTransportError`.
    """
    masked = mask_url(url)
    scheme = urlsplit(str(url)).scheme if isinstance(url, str) else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise RedisTransportError(
            f"transport.url {masked!r}: scheme {scheme + '://' if scheme else '(none)'} is not "
            "supported; use redis://[user:password@]host:port/db, rediss:// (TLS) or unix://path"
        )
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            client_name=client_name,
        )
    except (ValueError, TypeError) as e:
        raise RedisTransportError(
            f"transport.url {masked!r} is not a valid Redis URL ({_one_line(e)})"
        ) from None
    if check:
        try:
            client.ping()
        except redis.AuthenticationError as e:
            client.close()
            raise RedisTransportError(
                f"Redis at {masked} rejected the credentials ({_one_line(e)}); "
                "check the user and password in transport.url"
            ) from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            client.close()
            raise RedisTransportError(
                f"cannot reach Redis at {masked} ({_one_line(e)}); "
                "check transport.url and that redis-server is running there"
            ) from None
        except RedisError as e:
            client.close()
            if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                raise RedisTransportError(
                    f"Redis at {masked} rejected the credentials ({_one_line(e)}); "
                    "check the user and password in transport.url"
                ) from None
            raise RedisTransportError(
                f"the server at {masked} did not answer like Redis ({_one_line(e)}); "
                "check the host and port in transport.url"
            ) from None
    return client


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not re.fullmatch(r"[^\s{}]{1,200}", prefix):
        raise ValueError(
            f"transport.prefix {prefix!r} must be 1-200 characters without spaces or braces"
        )
    return prefix


class _Keys:
    def __init__(self, prefix: str):
        prefix = _check_prefix(prefix)
        self.prefix = prefix
        self.unrolls = f"{prefix}:unrolls"
        self.params = f"{prefix}:params"
        self.learner = f"{prefix}:learner"
        self.stats = f"{prefix}:stats"
        self.closed = f"{prefix}:closed"


class _Link:
    """One client plus reconnect state: a failed command marks the server down, and nothing
    is sent again until an exponential backoff (capped) has passed. Not thread-safe: each
    thread gets its own `_Link` (the client's connection pool is shared safely)."""

    def __init__(self, client: redis.Redis, where: str, role: str, *, quiet: bool = False):
        self.client = client
        self.where = where
        self.role = role
        self.quiet = quiet
        self.down_since: float | None = None
        self.next_try = 0.0
        self.backoff = BACKOFF_MIN
        self.reconnects = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def wait_time(self) -> float:
        return max(0.0, self.next_try - time.monotonic()) if self.down else 0.0

    def call(self, fn: Callable, *args, **kwargs):
        if self.down and time.monotonic() < self.next_try:
            raise _Unavailable
        try:
            out = fn(*args, **kwargs)
        except _TRANSIENT as e:
            now = time.monotonic()
            if self.down_since is None:
                self.down_since = now
                self.backoff = BACKOFF_MIN
                if not self.quiet:
                    _log(
                        f"{self.role} lost Redis at {self.where} ({_one_line(e)}); "
                        f"retrying with backoff up to {BACKOFF_MAX:g}s"
                    )
            else:
                self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            self.next_try = now + self.backoff * random.uniform(0.8, 1.0)
            raise _Unavailable from None
        if self.down_since is not None:
            if not self.quiet:
                _log(
                    f"{self.role} reconnected to Redis at {self.where} after "
                    f"{time.monotonic() - self.down_since:.1f}s"
                )
            self.down_since = None
            self.reconnects += 1
        return out


def _learner_fields(bound: int, drop: bool, max_bytes: int, token: str) -> list:
    fields = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "bound": bound,
        "drop": int(drop),
        "max_bytes": max_bytes,
        "token": token,
    }
    return [x for kv in fields.items() for x in kv]


def _stop_thread(stop: threading.Event, thread: threading.Thread | None) -> None:
    stop.set()
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=2.0)


# ----------------------------------------------------------------------------- learner side


class RedisQueue(Closing):
    """The learner's end of the Redis unroll queue; it owns the keys under ``prefix``.

    Create with `RedisQueue.create`; actors connect with `RedisProducer.connect`. Use `get`
    from one thread (a daemon thread keeps the learner heartbeat alive). Other learner
    processes of a multi-process run consume from the same keys with `RedisQueue.attach`.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: _Keys,
        where: str,
        *,
        bound: int,
        overflow: str,
        max_frame_bytes: int,
        spec: FrameSpec | None,
        batch: int,
        token: str | None,
    ):
        self._client = client
        self._keys = keys
        self.where = where
        self.bound = bound
        self.overflow = overflow
        self.max_frame_bytes = max_frame_bytes
        self.spec = spec
        self.batch = batch
        self._link = _Link(client, where, "learner")
        self._pop = keys.unrolls
        self._buffer: deque[bytes] = deque()
        self._got = self._rejected = 0
        self._server_counts = {"put": 0, "dropped": 0}  # last values read from the server
        self._count_base = {"put": 0, "dropped": 0}  # carried over server restarts
        self._qsize = 0
        self._closed = False
        self.owner = token is not None  # claimed the keys (else attached to an owner's)
        self._stop = threading.Event()
        self._thread = None
        if self.owner:
            fields = _learner_fields(bound, overflow == "drop_oldest", max_frame_bytes, token)
            self._thread = threading.Thread(
                target=_heartbeat_loop,
                args=(client, keys, where, token, fields, self._stop),
                name=f"redis-heartbeat-{keys.prefix}",
                daemon=True,
            )
            self._thread.start()
        self._finalizer = weakref.finalize(self, _stop_thread, self._stop, self._thread)

    @classmethod
    def create(
        cls,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        *,
        bound: int,
        max_frame_bytes: int,
        overflow: str = "block",
        spec: FrameSpec | None = None,
        batch: int | None = None,
    ) -> RedisQueue:
        """Claim ``prefix`` on the server at `url` for this learner and start its heartbeat.

        Args:
          url: Redis URL.
          prefix: key prefix; must not be in use by another live learner.
          bound: most frames the list holds (``actors.num * slots_per_actor``).
          max_frame_bytes: largest encoded unroll producers may push.
          overflow: ``"block"`` (producers wait for room) or ``"drop_oldest"``.
          spec: if given, every frame must match it exactly or it is rejected.
          batch: frames popped per round trip into the local buffer; default
            ``bound // 4`` in [1, 8], so prefetching adds little to the policy lag.

        Raises:
          RedisTransportError: bad URL, unreachable server, bad credentials, prefix in use.
        """
        if overflow not in ("block", "drop_oldest"):
            raise ValueError(f"overflow {overflow!r} is not one of ['block', 'drop_oldest']")
        for what, value in (("bound", bound), ("max_frame_bytes", max_frame_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive int, got {value!r}")
        batch = min(8, max(1, bound // 4)) if batch is None else max(1, int(batch))
        keys = _Keys(prefix)
        where = mask_url(url)
        client = connect(url, client_name=f"jaxrl_impala-learner-{os.getpid()}")
        token = secrets.token_hex(8)
        fields = _learner_fields(bound, overflow == "drop_oldest", max_frame_bytes, token)
        try:
            claim = client.register_script(_CLAIM_LUA)
            owner = claim(
                keys=[keys.learner, keys.closed, keys.unrolls, keys.stats, keys.params],
                args=[HEARTBEAT_TTL_MS, *fields],
            )
        except RedisError as e:
            client.close()
            raise RedisTransportError(
                f"cannot set up transport.prefix {prefix!r} on Redis at {where} ({_one_line(e)})"
            ) from None
        if owner != 0:
            client.close()
            pid, host = (x.decode(errors="replace") if x else "?" for x in owner)
            raise RedisTransportError(
                f"transport.prefix {prefix!r} on Redis at {where} is in use by a live learner "
                f"(pid {pid} on {host}); stop it, wait {HEARTBEAT_TTL_MS // 1000}s if it was "
                "killed, or choose another transport.prefix"
            )
        return cls(
            client,
            keys,
            where,
            bound=bound,
            overflow=overflow,
            max_frame_bytes=max_frame_bytes,
            spec=spec,
            batch=batch,
            token=token,
        )

    @classmethod
    def attach(
        cls,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        *,
        spec: FrameSpec | None = None,
        batch: int = 4,
    ) -> RedisQueue:
        """Another learner process's end of the queue that process 0 created: it pops and
        validates frames as the owner does, but claims nothing, runs no heartbeat, and its
        `close` leaves the keys alone. Its `stats` count only its own frames (the queue's
        put and drop counters are the owner's to report)."""
        client = connect(url, client_name=f"jaxrl_impala-learner-{os.getpid()}")
        return cls(
            client,
            _Keys(prefix),
            mask_url(url),
            bound=0,
            overflow="block",
            max_frame_bytes=0,
            spec=spec,
            batch=max(1, batch),
            token=None,
        )

    @property
    def prefix(self) -> str:
        return self._keys.prefix

    @property
    def stats(self) -> dict[str, int]:
        """``got``, ``frames_rejected``, ``unrolls_dropped`` and ``put`` (counted on the
        server, accumulated across server restarts) and ``reconnects``."""
        if not self.owner:
            return {"got": self._got, "frames_rejected": self._rejected}
        if not self._closed:
            self._read_counts()
        return {
            "got": self._got,
            "frames_rejected": self._rejected,
            "unrolls_dropped": self._count_base["dropped"] + self._server_counts["dropped"],
            "put": self._count_base["put"] + self._server_counts["put"],
            "reconnects": self._link.reconnects,
        }

    def _read_counts(self) -> None:
        try:
            values = self._link.call(self._client.hmget, self._keys.stats, ["put", "dropped"])
        except _Unavailable:
            return
        except ResponseError:  # someone replaced the key; keep the last known counts
            return
        for name, raw in zip(("put", "dropped"), values, strict=True):
            try:
                value = int(raw or 0)
            except ValueError:
                continue
            if value < self._server_counts[name]:  # the server restarted and lost its counts
                self._count_base[name] += self._server_counts[name]
            self._server_counts[name] = value

    def qsize(self) -> int:
        """Frames waiting in the Redis list (not counting the up to `batch` frames already
        prefetched into this process); the last known value while the server is down."""
        if self._closed:
            return 0
        try:
            self._qsize = int(self._link.call(self._client.llen, self._keys.unrolls))
        except (_Unavailable, ResponseError):
            pass
        return self._qsize

    def _validate(self, data: Any) -> Frame | None:
        try:
            if not isinstance(data, bytes):
                raise FrameError(f"list element of type {type(data).__name__}")
            return codec.decode(data, spec=self.spec)
        except Exception:  # noqa: BLE001 - a hostile frame must never crash the learner
            self._rejected += 1
            return None

    def _fill(self, deadline: float | None) -> None:
        """One round trip: pop up to `batch` frames, or block (at most until `deadline`)."""
        try:
            items = self._link.call(self._client.lpop, self._pop, self.batch)
            if items:
                self._buffer.extend(items)
                return
            remaining = BLOCK_MAX if deadline is None else deadline - time.monotonic()
            if remaining < 0.002:
                return
            got = self._link.call(self._client.blpop, [self._pop], min(remaining, BLOCK_MAX))
            if got:
                self._buffer.append(got[1])
        except ResponseError as e:
            # The key holds something that is not a list (a hostile or confused writer):
            # drop it, count it, carry on.
            self._rejected += 1
            _log(f"learner: {self._pop} is not a list ({_one_line(e)}); deleting it")
            try:
                self._link.call(self._client.delete, self._pop)
            except (_Unavailable, ResponseError):
                pass

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next validated unroll, or None on timeout, once closed, or while the server is
        unreachable. The frame's arrays are read-only views of a private buffer."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while not self._closed:
            while self._buffer:
                frame = self._validate(self._buffer.popleft())
                if frame is not None:
                    self._got += 1
                    return frame
            now = time.monotonic()
            if self._link.down and self._link.wait_time() > 0:
                if deadline is not None and now >= deadline:
                    return None
                pause = self._link.wait_time()
                if deadline is not None:
                    pause = min(pause, deadline - now)
                time.sleep(pause)
                continue
            try:
                self._fill(deadline)
            except _Unavailable:
                continue
            if not self._buffer and deadline is not None and time.monotonic() >= deadline:
                return None
        return None

    def release(self, frame: Frame) -> None:
        """Nothing to hand back: every frame owns its buffer."""

    def close(self) -> None:
        """Write ``P:closed`` (producers' `put` returns False from now on), delete the queue's
        keys and stop the heartbeat. Best effort when the server is down. Idempotent."""
        if self._closed:
            return
        if not self.owner:
            self._closed = True
            self._buffer.clear()
            self._client.close()
            return
        self._read_counts()  # final counters survive close
        self._finalizer()  # stops the heartbeat thread
        self._closed = True
        self._buffer.clear()
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self._keys.closed, 1, px=CLOSED_TTL_MS)
            pipe.delete(self._keys.unrolls, self._keys.stats, self._keys.learner)
            pipe.execute()
        except RedisError as e:
            _log(f"learner: could not mark {self._keys.prefix} closed at {self.where} ({e})")
        self._client.close()


def _heartbeat_loop(
    client: redis.Redis,
    keys: _Keys,
    where: str,
    token: str,
    fields: list,
    stop: threading.Event,
) -> None:
    """Refresh ``P:learner`` every `HEARTBEAT_INTERVAL` (and re-create it after a restart)."""
    link = _Link(client, where, "learner heartbeat", quiet=True)
    script = client.register_script(_HEARTBEAT_LUA)
    warned = False
    while not stop.wait(HEARTBEAT_INTERVAL):
        try:
            ok = link.call(script, keys=[keys.learner], args=[HEARTBEAT_TTL_MS, token, *fields])
        except (_Unavailable, RedisError):
            continue
        if not ok and not warned:
            warned = True
            _log(f"another learner took over transport.prefix {keys.prefix!r} at {where}")


class RedisParamStore(Closing):
    """Latest parameters + version in the hash ``P:params`` (fields ``version``, ``frame``).

    The owner (`create`) publishes; readers (`connect`) fetch. `publish` never raises on a
    lost server: the newest frame is kept and a background thread re-sends it once the
    server is back (or whenever the key has vanished, e.g. after a restart).
    """

    def __init__(self, client: redis.Redis, keys: _Keys, where: str, owner: bool, capacity: int):
        self._client = client
        self._keys = keys
        self.where = where
        self.owner = owner
        self.capacity = capacity
        self._link = _Link(client, where, "learner params" if owner else "actor params")
        self._fetch = client.register_script(_FETCH_LUA)
        self._published = self._fetched = self._rejected = self._publish_failed = 0
        self._latest: tuple[int, bytes] | None = None
        self._dirty = False
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._thread = None
        if owner:
            self._thread = threading.Thread(
                target=self._upkeep, name=f"redis-params-{keys.prefix}", daemon=True
            )
            self._thread.start()
        self._finalizer = weakref.finalize(self, _stop_thread, self._stop, self._thread)

    @classmethod
    def create(cls, url: str, prefix: str = DEFAULT_PREFIX, *, capacity: int) -> RedisParamStore:
        """The learner's store; frames larger than `capacity` bytes are refused."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        keys = _Keys(prefix)
        client = connect(url, client_name=f"jaxrl_impala-params-{os.getpid()}")
        return cls(client, keys, mask_url(url), True, capacity)

    @classmethod
    def connect(
        cls, url: str, prefix: str = DEFAULT_PREFIX, *, client: redis.Redis | None = None
    ) -> RedisParamStore:
        """A reader (actor) of the store under `prefix`."""
        keys = _Keys(prefix)
        client = client or connect(url, client_name=f"jaxrl_impala-actor-{os.getpid()}")
        return cls(client, keys, mask_url(url), False, 0)

    @property
    def stats(self) -> dict[str, int]:
        return {
            "published": self._published,
            "publish_failed": self._publish_failed,
            "fetched": self._fetched,
            "frames_rejected": self._rejected,
            "reconnects": self._link.reconnects,
        }

    def publish(self, version: int, arrays: Mapping[str, Any]) -> None:
        """Replace the stored parameters with one atomic HSET.

        Raises FrameTooLargeError beyond the capacity (the stored params are unchanged then);
        if the server is unreachable the frame is kept and sent by the upkeep thread.
        """
        if self._closed or not self.owner:
            raise ValueError("publish needs the learner's open RedisParamStore")
        frame = codec.encode(arrays, {"version": int(version)})
        if len(frame) > self.capacity:
            raise FrameTooLargeError(
                f"encoded params need {len(frame)} bytes but the store holds {self.capacity}"
            )
        with self._lock:
            self._latest = (int(version), frame)
            try:
                self._link.call(
                    self._client.hset,
                    self._keys.params,
                    mapping={"version": int(version), "frame": frame},
                )
                self._dirty = False
                self._published += 1
            except (_Unavailable, ResponseError):
                self._dirty = True
                self._publish_failed += 1

    def _upkeep(self) -> None:
        link = _Link(self._client, self.where, "learner params upkeep", quiet=True)
        republish = self._client.register_script(_REPUBLISH_LUA)
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            with self._lock:
                if self._latest is None:
                    continue
                version, frame = self._latest
                try:
                    if self._dirty:
                        link.call(
                            self._client.hset,
                            self._keys.params,
                            mapping={"version": version, "frame": frame},
                        )
                        self._dirty = False
                        self._published += 1
                    else:
                        link.call(republish, keys=[self._keys.params], args=[version, frame])
                except (_Unavailable, RedisError):
                    pass

    def fetch(self, newer_than: int = -1) -> tuple[int, dict[str, np.ndarray]] | None:
        """``(version, arrays)`` if the stored version is > `newer_than`, else None (also
        while the server is unreachable). One round trip; the frame is sent only if newer."""
        if self._closed:
            return None
        try:
            reply = self._link.call(self._fetch, keys=[self._keys.params], args=[int(newer_than)])
        except (_Unavailable, ResponseError):
            return None
        if not reply or len(reply) < 2:
            return None
        try:
            version = int(reply[0])
            frame = codec.decode(reply[1])
            if frame.meta.get("version") != version:
                raise FrameError("param frame version disagrees with the store's version field")
        except Exception:  # noqa: BLE001 - a corrupt store is counted, never raised
            self._rejected += 1
            return None
        self._fetched += 1
        return version, frame.arrays

    def close(self) -> None:
        """Detach; the owner also deletes ``P:params``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        if self.owner:
            try:
                self._client.delete(self._keys.params)
            except RedisError as e:
                _log(f"learner: could not delete {self._keys.params} at {self.where} ({e})")
        self._client.close()


# ----------------------------------------------------------------------------- actor side


class RedisProducer(Closing):
    """An actor's end of the Redis unroll queue. Use from one thread.

    Any non-negative `producer_id` works: ids are metadata (they appear in `stats` only).
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: _Keys,
        where: str,
        producer_id: int,
        max_frame_bytes: int | None,
        stale_after: float,
    ):
        self._client = client
        self._keys = keys
        self.where = where
        self.producer_id = producer_id
        self.max_frame_bytes = max_frame_bytes
        self.stale_after = stale_after
        self._link = _Link(client, where, f"actor {producer_id}")
        self._push = client.register_script(_PUSH_LUA)
        self._room = client.register_script(_ROOM_LUA)
        self._put = self._dropped = 0
        self._closed = False
        self._closed_seen = False
        self._last_seen = time.monotonic()  # connecting counts as seeing the learner
        self._next_status = 0.0

    @classmethod
    def connect(
        cls,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        producer_id: int = 0,
        *,
        max_frame_bytes: int | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
        client: redis.Redis | None = None,
    ) -> RedisProducer:
        """Connect to the queue under `prefix` at `url` (the learner need not be up yet)."""
        if isinstance(producer_id, bool) or not isinstance(producer_id, int) or producer_id < 0:
            raise ValueError(f"producer_id must be a non-negative int, got {producer_id!r}")
        keys = _Keys(prefix)
        client = client or connect(url, client_name=f"jaxrl_impala-actor-{producer_id}")
        return cls(client, keys, mask_url(url), producer_id, max_frame_bytes, stale_after)

    @property
    def stats(self) -> dict[str, int]:
        return {
            "put": self._put,
            "unrolls_dropped": self._dropped,
            "reconnects": self._link.reconnects,
        }

    def _note(self, status: int) -> None:
        if status == _CLOSED:
            self._closed_seen = True
        elif status != _NO_LEARNER:
            self._last_seen = time.monotonic()

    def _status(self) -> int | None:
        """One ROOM round trip: closed / no learner / full / room; None if unreachable."""
        self._next_status = time.monotonic() + STATUS_EVERY
        try:
            status = int(
                self._link.call(
                    self._room, keys=[self._keys.unrolls, self._keys.learner, self._keys.closed]
                )
            )
        except (_Unavailable, ResponseError):
            return None
        self._note(status)
        return status

    def _refresh(self) -> None:
        if not self._closed_seen and time.monotonic() >= self._next_status:
            self._status()

    @property
    def closed(self) -> bool:
        """True once this handle was closed or the learner wrote ``P:closed``."""
        if self._closed:
            return True
        self._refresh()
        return self._closed_seen

    def owner_alive(self, stale_after: float | None = None) -> bool:
        """False once the queue is closed or no learner heartbeat has been seen for
        `stale_after` seconds (default: the handle's, `DEFAULT_STALE_AFTER`); a Redis
        restart shorter than that is survived."""
        if self.closed:
            return False
        stale = self.stale_after if stale_after is None else stale_after
        return time.monotonic() - self._last_seen <= stale

    def put(
        self,
        arrays: Mapping[str, Any],
        meta: Mapping[str, int] | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Encode one unroll and push it (one round trip).

        Returns False (nothing enqueued) on timeout: the list is full under ``block``, the
        server is unreachable, or no learner is alive; and at once when the queue is closed.
        Raises `FrameTooLargeError` beyond the learner's frame limit and TypeError/ValueError
        on an unframeable array.
        """
        if self._closed or self._closed_seen:
            return False
        frame = codec.encode(arrays, meta)
        if self.max_frame_bytes is not None and len(frame) > self.max_frame_bytes:
            raise FrameTooLargeError(
                f"encoded unroll needs {len(frame)} bytes; the learner accepts at most "
                f"{self.max_frame_bytes}"
            )
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        keys = [self._keys.unrolls, self._keys.stats, self._keys.learner, self._keys.closed]
        while True:
            try:
                status, extra = self._link.call(self._push, keys=keys, args=[frame])
            except (_Unavailable, ResponseError):
                status, extra = None, 0
            if status is not None:
                self._note(int(status))
            if status == _OK:
                self._put += 1
                self._dropped += int(extra)
                return True
            if status == _CLOSED:
                return False
            if status == _TOO_LARGE:
                raise FrameTooLargeError(
                    f"encoded unroll needs {len(frame)} bytes; the learner accepts at most "
                    f"{int(extra)}"
                )
            if not self._wait_for_room(deadline):
                return False

    def _wait_for_room(self, deadline: float | None) -> bool:
        """Sleep-poll (cheap ROOM calls, no frame resent) until a push may succeed; False on
        timeout, close, or a learner gone for longer than `stale_after`."""
        pause = POLL_MIN
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            sleep = self._link.wait_time() if self._link.down else pause
            if deadline is not None:
                sleep = min(sleep, deadline - now)
            time.sleep(max(sleep, 0.0))
            pause = min(pause * 2, POLL_MAX)
            if self._closed:
                return False
            if self._link.down and self._link.wait_time() > 0:
                status = None
            else:
                status = self._status()
            if status == _CLOSED or not self.owner_alive():
                return False
            if status == _OK:
                return True

    def close(self) -> None:
        """Disconnect (never touches the learner's keys). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._client.close()
