"""A TCP forwarder on loopback in front of the API server, to hold back or cut off the operator's connections."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``. ``hold()`` parks new connections until ``release()``;
    ``cut()`` closes every connection and refuses new ones until ``restore()``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._released = threading.Event()
        self._released.set()
        self._cut = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for sock in list(self._sockets):
                _close(sock)
            self._sockets.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def kubeconfig(self, original: Path, target: Path) -> Path:
        """A copy of ``original`` whose server is this proxy (the API server's certificate names 127.0.0.1)."""
        text = re.sub(
            r"server: https://127\.0\.0\.1:\d+", f"server: https://127.0.0.1:{self.port}", original.read_text()
        )
        target.write_text(text)
        target.chmod(0o600)
        return target

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._released.wait()
        with self._lock:
            if self._cut or self._closed:
                _close(client)
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                return
            upstream.settimeout(None)
            self._sockets.update((client, upstream))
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        _pump(upstream, client)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
