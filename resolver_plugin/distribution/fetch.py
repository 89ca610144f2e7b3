"""Where sync gets its bytes and when it asks again: the Fetcher interface, HttpFetcher, Backoff.

HttpFetcher GETs paths below the source URL with timeouts and a cap on every
body; tests drive the same Syncer through an in-memory repository instead
(tests/support/repository.py). Backoff paces the retries after a failure.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import aiohttp
from yarl import URL

from blocklist.core import __version__
from blocklist.core.errors import ErrorKind, SizeError, TransportError
from resolver_plugin.config import PluginConfig, SourceConfig
from resolver_plugin.distribution.credentials import client_tls

CHUNK = 64 * 1024
MIN_RATE = 64 * 1024  # bytes/s below which a download is abandoned (a slow-drip server)


class SyncError(TransportError):
    """A failure that is not the artifact's fault: network, timeout, HTTP status or cache."""


@dataclass(frozen=True)
class Fetched:
    """One answer of a Fetcher: status 200 with the whole body, or 304 (the ETag matched) with none."""

    status: int
    body: bytes
    etag: str | None
    headers: Mapping[str, str]  # case-insensitive, as over HTTP


class Fetcher(Protocol):
    """Where Syncer gets its bytes: GETs of paths below the source (HttpFetcher, a test's simulator).

    `get` returns status 200 and the body exactly as sent (never decompressed),
    or status 304 with no body when `headers` carries an If-None-Match equal to
    the path's current ETag; `etag` is the ETag of the answer. Anything else raises:
      SizeError              the body is longer than `limit` bytes, announced or
                             sent; reading stops soon after `limit` bytes
      SyncError(HTTP)        any other status (404, 503, ...)
      SyncError(TIMEOUT)     no complete answer within the configured timeouts;
                             `wait` seconds are added for a long-poll
      SyncError(NETWORK)     the source cannot be reached or the connection breaks
    It judges nothing: the bytes go to TrustedState.
    """

    async def get(self, path: str, limit: int, headers: Mapping[str, str] | None = None,
                  wait: float = 0.0) -> Fetched: ...


def http_session(config: PluginConfig | None = None, source: SourceConfig | None = None) -> aiohttp.ClientSession:
    """The client session HttpFetcher needs (trusting `source`'s tls_ca_file, default the first
    source's); the caller closes it."""
    tls = client_tls(config, source) if config is not None else True
    # auto_decompress off: the bytes hashed are the bytes received, and no decompression bomb.
    return aiohttp.ClientSession(headers={"User-Agent": f"blocklist-plugin/{__version__}"},
                                 auto_decompress=False, connector=aiohttp.TCPConnector(limit=4, ssl=tls))


class HttpFetcher:
    """Fetcher over HTTP(S), below `source`'s URL (default: the first source's)."""

    def __init__(self, session: aiohttp.ClientSession, config: PluginConfig,
                 source: SourceConfig | None = None) -> None:
        self.session = session
        url = (source or config.sources[0]).url
        self.base = url if url.endswith("/") else url + "/"
        self.timeouts = config.timeouts

    async def get(self, path: str, limit: int, headers: Mapping[str, str] | None = None,
                  wait: float = 0.0) -> Fetched:
        url = URL(self.base + quote(path, safe="/"), encoded=True)
        # sock_read bounds every silence; total bounds a server that drips bytes slowly.
        total = self.timeouts.connect + self.timeouts.read + wait + limit / MIN_RATE
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=self.timeouts.connect,
                                        sock_read=self.timeouts.read + wait)
        try:
            async with self.session.get(url, headers=headers, timeout=timeout) as resp:
                if resp.status == 304:
                    return Fetched(304, b"", resp.headers.get("ETag"), resp.headers)
                if resp.status != 200:
                    raise SyncError(ErrorKind.HTTP, f"{path}: HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > limit:
                    raise SizeError(f"{path}: the server announces {resp.content_length} bytes, "
                                    f"more than the {limit} expected")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(CHUNK):
                    body += chunk
                    if len(body) > limit:
                        resp.close()  # drop the connection: never read an endless body
                        raise SizeError(f"{path}: the server sent more than the {limit} bytes "
                                        "expected; download aborted")
                return Fetched(200, bytes(body), resp.headers.get("ETag"), resp.headers)
        except TimeoutError:
            raise SyncError(ErrorKind.TIMEOUT, f"{path}: timed out (connect {self.timeouts.connect:g}s, "
                                       f"read {self.timeouts.read + wait:g}s, total {total:g}s)") from None
        except aiohttp.ClientError as exc:
            raise SyncError(ErrorKind.NETWORK, f"{path}: {exc.__class__.__name__}: {exc}") from None


class Backoff:
    """Capped exponential back-off with "equal jitter": delay n lies in [d/2, d], d = min(cap, base*2^n)."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base, self.cap, self.failures = base, cap, 0
        self.rng = rng or random.Random()

    def next_delay(self) -> float:
        d = min(self.cap, self.base * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return d / 2 + self.rng.random() * d / 2

    def reset(self) -> None:
        self.failures = 0
