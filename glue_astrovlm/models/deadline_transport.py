"""An httpx transport on which each request has one total deadline: connect, send and the whole answer.

httpx's ``timeout`` limits each network operation, not the request: a server that sends one byte a
second never times out. `DeadlineTransport` runs httpx requests on httpcore's connection pool with a
network backend that shortens every connect, TLS handshake, write and read to the time left before the
deadline of the request running in that thread, which `deadline` sets. When no time is left, the
operation raises the matching httpx time-out (`httpx.ConnectTimeout`, `httpx.ReadTimeout`, ...), so
callers handle it as any other time-out.

Only public httpx and httpcore interfaces are used: `httpx.BaseTransport`, `httpcore.ConnectionPool`
with its ``network_backend`` and ``proxy`` arguments, and `httpcore.SyncBackend`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

import httpcore
import httpx

__all__ = ["DeadlineTransport", "deadline"]

#: Bytes written per socket call, so that a server that reads slowly also meets the deadline.
_WRITE_CHUNK = 64 * 1024

_local = threading.local()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Give the requests sent from this thread inside the block ``seconds`` in all, counted from now."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _local.deadline = previous


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` shortened to the time left before this thread's deadline; ``expired`` when none is left."""
    end = getattr(_local, "deadline", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise expired("the time limit for the whole request has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), _WRITE_CHUNK):
            self._stream.write(buffer[start:start + _WRITE_CHUNK], _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _time_left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self):
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options=None) -> httpcore.NetworkStream:
        timeout = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options=None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(
            path, _time_left(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


# httpcore's exceptions and the httpx ones of the same meaning, most specific first
_HTTPX_ERRORS = (
    (httpcore.PoolTimeout, httpx.PoolTimeout), (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout), (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError), (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError), (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError), (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.ProxyError, httpx.ProxyError), (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for core, mapped in _HTTPX_ERRORS:
            if isinstance(error, core):
                raise mapped(str(error)) from error
        raise


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream):
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._stream

    def close(self) -> None:
        if hasattr(self._stream, "close"):
            with _as_httpx_errors():
                self._stream.close()


class DeadlineTransport(httpx.BaseTransport):
    """An httpx transport whose requests stop at the deadline that `deadline` sets for their thread.

    Parameters
    ----------
    limits : httpx.Limits
        Connection pool limits.
    proxy : str, optional
        Proxy URL (``http://``, ``https://``, or ``socks5://`` with ``socksio`` installed). httpx does
        not read proxy settings from the environment for a client given a transport: the caller decides.
    """

    def __init__(self, limits: httpx.Limits, proxy: str | None = None):
        proxy_config = None
        if proxy is not None:
            settings = httpx.Proxy(proxy)
            proxy_config = httpcore.Proxy(
                url=httpcore.URL(scheme=settings.url.raw_scheme, host=settings.url.raw_host,
                                 port=settings.url.port, target=settings.url.raw_path),
                auth=settings.raw_auth, headers=settings.headers.raw)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), proxy=proxy_config,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, network_backend=_DeadlineBackend())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                             target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        with _as_httpx_errors():
            response = self._pool.handle_request(core_request)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream), extensions=response.extensions)

    def close(self) -> None:
        self._pool.close()
