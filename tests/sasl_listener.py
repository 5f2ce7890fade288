"""A Kafka listener that speaks just enough of the protocol to take a SASL/PLAIN login.

librdkafka's mock cluster has no SASL, so this is how a test sees what the daemon's Kafka client
really sends: it answers ApiVersions and SaslHandshake (PLAIN), records the SaslAuthenticate
token (``\\0username\\0password``) and refuses it, as a broker refuses a wrong password.
"""

from __future__ import annotations

import socket
import struct
import threading

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_VERSION, SASL_AUTHENTICATION_FAILED = 35, 58
SUPPORTED = ((API_VERSIONS, 0, 0), (SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 0))


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


class SaslListener:
    """127.0.0.1:`port`, answering each connection in a thread; `tokens` holds every login."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.tokens: list[bytes] = []
        self.mechanisms: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    (size,) = struct.unpack(">i", self._read(conn, 4))
                    request = self._read(conn, size)
                    api, version, correlation = struct.unpack(">hhi", request[:8])
                    (client_id_size,) = struct.unpack(">h", request[8:10])
                    body = request[10 + max(client_id_size, 0):]
                    reply = self._answer(api, version, body)
                    if reply is None:
                        return
                    frame = struct.pack(">i", correlation) + reply
                    conn.sendall(struct.pack(">i", len(frame)) + frame)
            except (ConnectionError, OSError, struct.error):
                return

    def _answer(self, api: int, version: int, body: bytes) -> bytes | None:
        if api == API_VERSIONS:  # v0 form; a newer version is refused with the list, as Kafka does
            error = UNSUPPORTED_VERSION if version > 0 else 0
            listing = b"".join(struct.pack(">hhh", *entry) for entry in SUPPORTED)
            return struct.pack(">hi", error, len(SUPPORTED)) + listing
        if api == SASL_HANDSHAKE:
            (size,) = struct.unpack(">h", body[:2])
            self.mechanisms.append(body[2:2 + size].decode())
            return struct.pack(">hi", 0, 1) + _string("PLAIN")
        if api == SASL_AUTHENTICATE:
            (size,) = struct.unpack(">i", body[:4])
            self.tokens.append(body[4:4 + size])
            return (struct.pack(">h", SASL_AUTHENTICATION_FAILED)
                    + _string("Authentication failed: invalid username or password")
                    + struct.pack(">i", 0))
        return None  # anything else: hang up
