"""Where to connect for a provider host (a curl --resolve style override) and how to check its TLS.

An override `host:port=addr:port` makes connections to host:port go to addr:port while the request
keeps its Host header, TLS SNI and certificate check for `host` (like curl --resolve, which also lets
the port change here). Tests and hostAliases-style setups use it to point real provider hosts at local
servers. `OverrideResolver` plugs the map into aiohttp (`TCPConnector(resolver=...)`).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from epp.config.traffic.documents import normalise_host
from epp.config.traffic.policy import UpstreamTLS


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _address(text: str, what: str, entry: str) -> Address:
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"resolve override {entry!r}: {what} must be host:port with a port 1-65535")
    return Address(host, int(port))


def parse_overrides(entries: Iterable[str]) -> dict[Address, Address]:
    """`["api.moonshot.cn:443=127.0.0.1:8443", ...]` -> {(host, port): (addr, port)}; later entries win."""
    out: dict[Address, Address] = {}
    for entry in entries:
        left, sep, right = entry.partition("=")
        if not sep:
            raise ValueError(f"resolve override {entry!r}: expected host:port=addr:port")
        src = _address(left, "the left side", entry)
        out[Address(normalise_host(src.host), src.port)] = _address(right, "the right side", entry)
    return out


class OverrideResolver(AbstractResolver):
    """aiohttp resolver: overridden host:port pairs go to their address, the rest to `fallback`."""

    def __init__(
        self, overrides: Mapping[Address, Address], fallback: AbstractResolver | None = None
    ) -> None:
        self._overrides = dict(overrides)
        # aiohttp's DefaultResolver wants a running loop: made on first use, not when the gateway is built.
        self._fallback = fallback

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        target = self._overrides.get(Address(normalise_host(host), port))
        if target is None:
            if self._fallback is None:
                self._fallback = DefaultResolver()
            return await self._fallback.resolve(host, port, family)
        fam = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        return [
            ResolveResult(
                hostname=host,
                host=target.host,
                port=target.port,
                family=fam,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        if self._fallback is not None:
            await self._fallback.close()


def tls_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """An SSLContext for aiohttp's `ssl=`: system CAs (or `ca_file`), hostname checked, unless verify is off.

    SNI is the request host by default; pass `tls.sni` as aiohttp's `server_hostname=` to change it.
    """
    if not tls.verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False  # must come before verify_mode
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=tls.ca_file)
