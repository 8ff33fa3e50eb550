"""The Redis transport: the same unroll queue and parameter store as `shm.py`, on a Redis server,
so actors can run on other hosts and join a running learner.

Keys (``P`` is ``transport.prefix``; the first two are the public contract)::

    P:unrolls   LIST    encoded unroll frames, oldest at the head (RPUSH in, LPOP out)
    P:params    HASH    {"version": int, "token": the run's token, "frame": encoded params},
                        replaced whole by one script
    P:learner   HASH    the learner's heartbeat (pid, host, queue bound, overflow policy,
                        largest frame), with a TTL the learner refreshes every 0.5 s
    P:stats     HASH    {"put": n, "dropped": n}, counted by the push and pop scripts
    P:closed    STRING  written (with a TTL) by the learner when it closes the queue

Pushes and the param fetch are server-side Lua scripts, so each is one round trip and atomic:

* push: refuse if ``P:closed`` exists or no learner is alive (``P:learner`` missing); under
  ``block``, refuse while the list holds ``bound`` frames; else RPUSH, and under ``drop_oldest``
  LTRIM back to ``bound`` and add exactly the number trimmed to ``P:stats dropped``. The bound
  is on the whole list (``actors.num * slots_per_actor``), not per actor: in Redis mode actor
  ids are only metadata, so remote actors may join with any id.
* fetch: read the stored frame's identity (token, version, length); send the frame only
  when it is news to the reader (`RedisParamStore.fetch`).
* pop: trim a list that outgrew its bound (a flood pushed around the push script), then pop
  up to ``batch`` frames, discarding elements over the learner's frame limit on the server.

The push script is the honest client's courtesy; the pop script is what holds against a
writer who pushes around it. The learner pops up to ``batch`` frames per round trip into a
small local buffer and polls (1-2 ms) while the list is empty, so no element over
``max_frame_bytes`` ever reaches its memory (``frames_rejected_oversized``), and a flood
costs throughput, not memory: the list is cut back to its bound (the oldest kept under
``block``, the newest under ``drop_oldest``; counted in ``unrolls_dropped``). Every frame is
validated by `codec.decode` against the learner's `FrameSpec`; a frame that fails (garbage,
truncated, wrong dtype or shape, a pickle) is dropped and counted in ``frames_rejected``,
never raised, never unpickled.

Parameters carry the run's random token, and the learner's upkeep writes its newest frame
back whenever the stored one is not exactly it, so a restarted learner, garbage or a forged
version in ``P:params`` neither crashes nor strands the actors (`RedisParamStore`).

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

import hashlib
import os
import random
import re
import secrets
import socket
import stat
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from jaxrl_impala.config import MASK, ConfigError, mask_url
from jaxrl_impala.transport import codec
from jaxrl_impala.transport.base import Closing, rejection_stats
from jaxrl_impala.transport.codec import Frame, FrameError, FrameSpec, FrameTooLargeError

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_STALE_AFTER",
    "RedisParamStore",
    "RedisProducer",
    "RedisQueue",
    "RedisTransportError",
    "PASSWORD_ENV",
    "connect",
    "mask_url",
    "read_password_file",
    "resolve_url",
]

DEFAULT_PREFIX = "jaxrl_impala"
PASSWORD_ENV = "REDIS_PASSWORD"  # where `resolve_url` looks for a password the URL lacks
DEFAULT_STALE_AFTER = 20.0  # seconds without a learner heartbeat before actors give up
HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_TTL_MS = 5000
CLOSED_TTL_MS = 120_000  # the closed marker outlives the run long enough for actors to see it
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0  # reconnect backoff (seconds)
POLL_MIN, POLL_MAX = 0.001, 0.01  # a blocked put polls for room this often
STATUS_EVERY = 0.25  # actors refresh `closed` / learner liveness at most this often
POP_POLL_MAX = 0.002  # the learner polls an empty list this often at most (no BLPOP: see _fill)
CONNECT_TIMEOUT = 3.0
SOCKET_TIMEOUT = 10.0
RETRY_REJECTED = 1.0  # a reader fetches a params frame it rejected again after this long
DIGEST_EVERY = 4  # the upkeep compares the stored frame's SHA-1 every 4th check (2 s)

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

# The learner's pop: first trim a list that outgrew its bound (a flood pushed around the push
# script) back to it, keeping the oldest under `block` and the newest under `drop_oldest`,
# counted as drops; then LPOP up to ARGV[1] elements, discarding (and counting) those over
# max_bytes here on the server, so they never cross to the learner. At most ARGV[1] + 8
# elements are looked at per call. An attached learner (ARGV[2] = 0) takes the owner's
# settings from its heartbeat, and pops nothing while there is none.
# KEYS: unrolls, stats, learner; ARGV: count, max_bytes, bound, drop ('1': drop_oldest).
# Returns {oversized, trimmed, element...}.
_POP_LUA = """
local max_bytes, bound, drop = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
if max_bytes <= 0 then
  local cfg = redis.call('HMGET', KEYS[3], 'max_bytes', 'bound', 'drop')
  max_bytes, bound, drop = tonumber(cfg[1]) or 0, tonumber(cfg[2]) or 0, cfg[3]
  if max_bytes <= 0 then return {0, 0} end
end
local trimmed = 0
local n = redis.call('LLEN', KEYS[1])
if bound > 0 and n > bound then
  trimmed = n - bound
  if drop == '1' then
    redis.call('LTRIM', KEYS[1], trimmed, -1)
  else
    redis.call('LTRIM', KEYS[1], 0, bound - 1)
  end
  redis.call('HINCRBY', KEYS[2], 'dropped', trimmed)
end
local want = tonumber(ARGV[1])
local out = {0, trimmed}
for _ = 1, want + 8 do
  local item = redis.call('LPOP', KEYS[1])
  if not item then break end
  if string.len(item) > max_bytes then
    out[1] = out[1] + 1
  else
    out[#out + 1] = item
    if #out - 2 >= want then break end
  end
end
return out
"""

# A reader's fetch. A stored frame's identity is "token/version/length" (its hash fields and
# the frame's size, all O(1) to read). The frame is sent unless its identity is the one this
# reader took last (ARGV[2]) or rejected last (ARGV[3]), and, for a reader that has taken
# none yet, unless its version is <= ARGV[1]. So a reader follows whatever the store holds:
# a new run's frame (new token) whatever its version, and a lower version the learner wrote
# back over a forged one. Absurd fields (not a hash, a version or token over 24 bytes) read
# as no params at all until the learner's upkeep rewrites them.
# KEYS: params; ARGV: newer_than, taken identity, rejected identity. Returns false, {id} or
# {id, version, token, frame}.
_FETCH_LUA = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return false end
local cur = redis.call('HMGET', KEYS[1], 'version', 'token')
if not cur[1] or #cur[1] > 24 or (cur[2] and #cur[2] > 24) then return false end
local token = cur[2] or ''
local id = token .. '/' .. cur[1] .. '/' .. redis.call('HSTRLEN', KEYS[1], 'frame')
if id == ARGV[2] or id == ARGV[3] then return {id} end
if ARGV[2] == '' then
  local v = tonumber(cur[1])
  if v and v <= tonumber(ARGV[1]) then return {id} end
end
return {id, cur[1], token, redis.call('HGET', KEYS[1], 'frame') or ''}
"""

# The learner's upkeep check, no frame sent: 1 if P:params holds exactly the learner's frame
# (its three fields; the frame's length always, its SHA-1 when ARGV[4] is not empty), -1 if
# the key is missing (a server restart), 0 if another writer changed it.
# KEYS: params; ARGV: version, token, frame length, frame sha1 or ''.
_CHECK_LUA = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return -1 end
if kind ~= 'hash' or redis.call('HLEN', KEYS[1]) ~= 3 then return 0 end
local cur = redis.call('HMGET', KEYS[1], 'version', 'token')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return 0 end
if redis.call('HSTRLEN', KEYS[1], 'frame') ~= tonumber(ARGV[3]) then return 0 end
if ARGV[4] ~= '' and redis.sha1hex(redis.call('HGET', KEYS[1], 'frame')) ~= ARGV[4] then
  return 0
end
return 1
"""

# The learner's write (a publish, or the upkeep's repair): the whole key is replaced, so no
# field of another writer survives and a key of the wrong type is no obstacle.
# KEYS: params; ARGV: version, token, frame.
_WRITE_LUA = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'token', ARGV[2], 'frame', ARGV[3])
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


def read_password_file(path: str) -> str:
    """The first line of `path`: a regular file that only its owner may read or write (mode
    0600 or 0400), as ssh demands of a private key. Errors are one line and never quote the
    file's contents.

    Raises:
      ConfigError: missing, unreadable, not a regular file, open to group or others, empty.
    """
    where = f"transport.password_file {path}"
    try:
        # O_NONBLOCK: opening a FIFO returns at once (and is refused below) instead of hanging.
        fd = os.open(os.path.expanduser(path), os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise ConfigError(f"{where}: cannot open it ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{where}: not a regular file")
        if mode & 0o077:
            raise ConfigError(
                f"{where}: mode {stat.S_IMODE(mode):04o} lets group or others at it, so it is "
                f"refused (as ssh refuses such a key); chmod 600 {path}"
            )
        data = f.read(1 << 16)
    try:
        lines = data.decode().splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    if not lines or not lines[0]:
        raise ConfigError(f"{where}: the first line is empty; put the password there")
    return lines[0]


def resolve_url(url: str, password_file: str = "", environ: Mapping[str, str] | None = None) -> str:
    """The URL to connect with: `url` itself when it holds a password; else `url` with the
    password of `password_file` (see `read_password_file`), else of ``REDIS_PASSWORD`` in
    `environ` (default: this process's), in its user info.

    A password masked as ``***`` counts as none given: ``RUN_DIR/config.yaml`` keeps the URL
    masked, so a resumed run gets its password back this way. The result holds the secret:
    pass it to `connect` or an actor's stdin, and never print it (`mask_url`).

    Raises:
      ConfigError: the password file is refused, or the URL's password is masked and neither
        the file nor the environment gives one.
    """
    environ = os.environ if environ is None else environ
    try:
        parts = urlsplit(str(url))
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return url  # `connect` reports it, masked
    in_query = [v for k, v in query if k.lower() == "password"]
    given = parts.password if parts.password is not None else next(iter(in_query), None)
    if given and given != MASK:
        return url
    password = read_password_file(password_file) if password_file else environ.get(PASSWORD_ENV)
    if not password:
        if given == MASK:
            raise ConfigError(
                f"transport.url {mask_url(url)}: the password is masked (RUN_DIR/config.yaml "
                f"never keeps it); give it in the {PASSWORD_ENV} environment variable or in "
                f"transport.password_file"
            )
        return url
    if in_query:
        parts = parts._replace(
            query=urlencode([(k, v) for k, v in query if k.lower() != "password"])
        )
    netloc = parts.netloc
    user = netloc.rsplit("@", 1)[0].split(":", 1)[0] if "@" in netloc else ""
    host = netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _log(message: str) -> None:
    print(f"redis transport: {message}", file=sys.stderr, flush=True)


def connect(url: str, *, client_name: str | None = None, check: bool = True) -> redis.Redis:
    """A client for `url` with no hidden retries (reconnects are ours, see `_Link`).

    With `check`, PINGs once and turns every failure into a one-line `RedisTransportError`.
    """
    masked = mask_url(url)
    try:
        scheme = urlsplit(str(url)).scheme if isinstance(url, str) else ""
    except ValueError:
        scheme = ""
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
                "check the user and the password (transport.url, transport.password_file "
                f"or {PASSWORD_ENV})"
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
                    "check the user and the password (transport.url, transport.password_file "
                    f"or {PASSWORD_ENV})"
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


def _stop_thread(
    stop: threading.Event, thread: threading.Thread | None, cv: threading.Condition | None = None
) -> None:
    stop.set()
    if cv is not None:  # wake a thread waiting on it
        with cv:
            cv.notify_all()
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
        self._pop_script = client.register_script(_POP_LUA)
        self._idle = POLL_MIN  # the next pause when the list was empty
        self._buffer: deque[bytes] = deque()
        self._got = self._rejected = 0
        self._rejected_by: dict[str, int] = {}  # the decode failures' reasons
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
            return {"got": self._got, **rejection_stats(self._rejected, self._rejected_by)}
        if not self._closed:
            self._read_counts()
        return {
            "got": self._got,
            **rejection_stats(self._rejected, self._rejected_by),
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
        except Exception as e:  # noqa: BLE001 - a hostile frame must never crash the learner
            self._rejected += 1
            reason = getattr(e, "reason", "malformed")
            self._rejected_by[reason] = self._rejected_by.get(reason, 0) + 1
            return None

    def _fill(self, deadline: float | None) -> None:
        """One round trip through the pop script: up to `batch` frames into the buffer, with
        elements over `max_frame_bytes` dropped and counted on the server (``oversized``).
        An empty list is polled (1 ms doubling to `POP_POLL_MAX`, at most until `deadline`):
        BLPOP would hand over any element, whatever its size."""
        drop = "1" if self.overflow == "drop_oldest" else "0"
        keys = [self._pop, self._keys.stats, self._keys.learner]
        try:
            reply = self._link.call(
                self._pop_script,
                keys=keys,
                args=[self.batch, self.max_frame_bytes, self.bound, drop],
            )
        except ResponseError as e:
            if "WRONGTYPE" in str(e):
                # The key holds something that is not a list (a hostile or confused writer):
                # drop it, count it, carry on.
                self._rejected += 1
                _log(f"learner: {self._pop} is not a list ({_one_line(e)}); deleting it")
                try:
                    self._link.call(self._client.delete, self._pop)
                except (_Unavailable, ResponseError):
                    pass
            reply = [0, 0]  # any other script error (a busy server): as an empty list
        oversized, items = int(reply[0]), reply[2:]
        if oversized:
            self._rejected += oversized
            self._rejected_by["oversized"] = self._rejected_by.get("oversized", 0) + oversized
        if items:
            self._buffer.extend(items)
            self._idle = POLL_MIN
            return
        pause = self._idle if deadline is None else min(self._idle, deadline - time.monotonic())
        if pause > 0:
            time.sleep(pause)
        self._idle = min(self._idle * 2, POP_POLL_MAX)

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
    """Latest parameters in the hash ``P:params``: fields ``version``, ``token``, ``frame``.

    The owner (`create`) publishes; readers (`connect`) fetch. Each store the learner creates
    draws a random run `token` (63 bits, also in every frame's meta), so that readers can
    tell a new run (a restarted or resumed learner, whose versions start over) from the one
    they follow.

    One thread of the owner writes the key, so writes land in order: each published frame,
    and the upkeep: every `HEARTBEAT_INTERVAL` a check that sends no frame (the stored
    version, token and frame length; every `DIGEST_EVERY`-th check also the frame's SHA-1,
    computed on the server), and a rewrite only when the stored frame is not the learner's
    newest: the key vanished (a server restart) or another writer changed it (garbage, a
    forged version, another token). `publish` waits for its own write, never for a lock held
    across a round trip, and never raises on a lost server: the upkeep writes the frame once
    the server is back.
    """

    def __init__(self, client: redis.Redis, keys: _Keys, where: str, owner: bool, capacity: int):
        self._client = client
        self._keys = keys
        self.where = where
        self.owner = owner
        self.capacity = capacity
        self.token = secrets.randbits(63) if owner else None
        self._link = _Link(client, where, "learner params" if owner else "actor params")
        self._fetch = client.register_script(_FETCH_LUA)
        self._published = self._fetched = self._rejected = self._publish_failed = 0
        self._rewritten = 0
        self._said_rewrite = False
        self._latest: tuple[int, bytes, str] | None = None  # version, frame, its SHA-1
        self._asked = self._written = 0  # publishes asked for / written (sequence numbers)
        self._write_ok = False
        self._cv = threading.Condition()
        self._taken = b""  # the identity of the frame `fetch` returned last
        self._refused, self._retry_at = b"", 0.0  # ... and of the one it rejected last
        self._closed = False
        self._stop = threading.Event()
        self._thread = None
        if owner:
            self._thread = threading.Thread(
                target=self._writer, name=f"redis-params-{keys.prefix}", daemon=True
            )
            self._thread.start()
        self._finalizer = weakref.finalize(self, _stop_thread, self._stop, self._thread, self._cv)

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
        """``published``, ``publish_failed`` and ``params_rewritten`` (the upkeep's rewrites)
        for the owner; ``fetched`` and ``frames_rejected`` for a reader; ``reconnects``."""
        return {
            "published": self._published,
            "publish_failed": self._publish_failed,
            "params_rewritten": self._rewritten,
            "fetched": self._fetched,
            "frames_rejected": self._rejected,
            "reconnects": self._link.reconnects,
        }

    def publish(self, version: int, arrays: Mapping[str, Any]) -> None:
        """Replace the stored parameters (one atomic script); returns once written or failed.

        Raises FrameTooLargeError beyond the capacity (the stored params are unchanged then);
        if the server is unreachable, the upkeep writes the frame once it is back.
        """
        if self._closed or not self.owner:
            raise ValueError("publish needs the learner's open RedisParamStore")
        frame = codec.encode(arrays, {"version": int(version), "token": self.token})
        if len(frame) > self.capacity:
            raise FrameTooLargeError(
                f"encoded params need {len(frame)} bytes but the store holds {self.capacity}"
            )
        latest = (int(version), frame, hashlib.sha1(frame, usedforsecurity=False).hexdigest())
        with self._cv:
            self._latest = latest
            self._asked += 1
            asked = self._asked
            self._cv.notify_all()
            self._cv.wait_for(
                lambda: self._written >= asked or self._stop.is_set(),
                timeout=CONNECT_TIMEOUT + SOCKET_TIMEOUT,
            )
            ok = self._written >= asked and self._write_ok
        if ok:
            self._published += 1
        else:
            self._publish_failed += 1

    def _writer(self) -> None:
        """The one writer of ``P:params``: each published frame, then the upkeep."""
        check = self._client.register_script(_CHECK_LUA)
        write = self._client.register_script(_WRITE_LUA)
        next_check, checks = time.monotonic() + HEARTBEAT_INTERVAL, 0
        while True:
            with self._cv:
                self._cv.wait_for(
                    lambda: self._stop.is_set() or self._asked > self._written,
                    timeout=max(0.0, next_check - time.monotonic()),
                )
                if self._stop.is_set():
                    return
                latest, asked = self._latest, self._asked
            if asked > self._written:
                ok = self._write(write, latest)
                with self._cv:
                    self._written, self._write_ok = asked, ok
                    self._cv.notify_all()
            elif time.monotonic() >= next_check:
                if latest is not None:
                    checks += 1
                    self._upkeep(check, write, latest, deep=checks % DIGEST_EVERY == 0)
                next_check = time.monotonic() + HEARTBEAT_INTERVAL

    def _write(self, write, latest: tuple[int, bytes, str]) -> bool:
        version, frame, _ = latest
        try:
            self._link.call(write, keys=[self._keys.params], args=[version, self.token, frame])
        except (_Unavailable, RedisError):
            return False
        return True

    def _upkeep(self, check, write, latest: tuple[int, bytes, str], deep: bool) -> None:
        """Rewrite the newest frame unless the server still holds exactly it."""
        version, frame, digest = latest
        args = [version, self.token, len(frame), digest if deep else ""]
        try:
            state = self._link.call(check, keys=[self._keys.params], args=args)
        except (_Unavailable, RedisError):
            return
        if state == 1:
            return
        if state == 0 and not self._said_rewrite:
            self._said_rewrite = True
            _log(
                f"learner: another writer changed {self._keys.params} at {self.where}; "
                f"writing version {version} back (said once, counted in params_rewritten)"
            )
        if self._write(write, latest):
            self._rewritten += 1

    def fetch(
        self, newer_than: int = -1, *, spec: FrameSpec | None = None
    ) -> tuple[int, dict[str, np.ndarray]] | None:
        """``(version, arrays)`` when the stored frame is news to this reader, else None (also
        while the server is unreachable). One round trip; the frame is sent only if news.

        News is, on a reader's first fetch, a version > `newer_than`; after that, any frame
        other than the last one this reader took (same token, version and length): a new
        run's, whose token differs and whose versions start over, or a version the learner
        wrote back over a forged one, lower than the forger's. So the caller takes the
        version it gets, lower or not, and a restarted learner or a forged version cannot
        strand it on stale params.

        Raises:
          FrameError: the frame fails validation: the codec's, `spec`'s (fields, dtypes,
            shapes, finite values) and the store's (the frame's meta version and token equal
            the hash fields). It is counted in ``stats["frames_rejected"]`` and is not
            fetched again for `RETRY_REJECTED` seconds, unless the stored frame changes.
        """
        if self._closed:
            return None
        refused = self._refused if time.monotonic() < self._retry_at else b""
        try:
            reply = self._link.call(
                self._fetch, keys=[self._keys.params], args=[int(newer_than), self._taken, refused]
            )
        except (_Unavailable, ResponseError):
            return None
        if not reply or len(reply) < 4:
            return None
        identity, raw_version, raw_token, data = reply
        try:
            version, token = int(raw_version), int(raw_token)
            frame = codec.decode(data, spec=spec)
            if frame.meta.get("version") != version or frame.meta.get("token") != token:
                raise FrameError("its meta version or token differs from the store's fields")
        except Exception as e:  # noqa: BLE001 - a corrupt store is counted and reported
            self._rejected += 1
            self._refused, self._retry_at = identity, time.monotonic() + RETRY_REJECTED
            name = identity.decode(errors="replace")
            raise FrameError(
                f"params {name} (token/version/bytes) rejected: {_one_line(e)}",
                getattr(e, "reason", "malformed"),
            ) from None
        self._taken = identity
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
