"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import socket

# Ports this process handed out. The kernel may offer a port again as soon
# as the probing socket is closed, before the service that got it binds it,
# so two calls in a row could return the same port.
_HANDED_OUT: set[int] = set()
_ATTEMPTS = 50


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that was free a moment ago, found by binding port 0.

    A port is never returned twice by one process. Another process can still
    take the port between this call and its use; the window is small enough
    for tests and development stacks.
    """
    for _ in range(_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise OSError(f"no unused free port found on {host} in {_ATTEMPTS} attempts")


def port_is_free(host: str, port: int) -> bool:
    """Return True if nothing listens on ``host:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR too, so a port whose old connections are in
        # TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
