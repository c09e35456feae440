"""How addresses are written for people: C{10.1.2.3:3358}, C{[fd00::1]:3358}."""

from __future__ import annotations

from typing import Any

__all__ = ["host_port", "format_peer"]


def host_port(host: str, port: int) -> str:
    """IPv6 hosts get brackets, so the port stays readable."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_peer(address: Any) -> str:
    """An L{IAddress} as C{host:port}, or a UNIX socket's path."""
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", None)
        if name is None:
            return "local"
        return name.decode() if isinstance(name, bytes) else str(name)
    return host_port(host, getattr(address, "port", 0))
