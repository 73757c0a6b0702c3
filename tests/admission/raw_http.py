"""Raw-socket HTTP for what clients hide: huge bodies sent as they are refused, slow headers."""

from __future__ import annotations

import socket
import time

CHUNK = b"\0" * (1024 * 1024)


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, bytes]:
    """(status, whole raw response) read until the server closes or `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            part = sock.recv(65536)
            if not part:
                break
            data += part
            if b"\r\n\r\n" in data and b"connection: close" not in data.lower():
                head, _, body = data.partition(b"\r\n\r\n")
                length = [
                    ln for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length:")
                ]
                if length and len(body) >= int(length[0].split(b":")[1]):
                    break
    except (TimeoutError, ConnectionResetError):
        pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def send_huge_body(url: str, path: str, total: int, chunked: bool) -> tuple[int, bytes, int]:
    """POST `total` bytes (announced, or chunked without a length) until the server answers or
    closes; returns (status, response, bytes the client managed to send)."""
    host, port = url.split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST {path} HTTP/1.1\r\nHost: {url}\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    sent = 0
    try:
        sock.sendall(head.encode())
        sock.settimeout(10)
        while sent < total:
            if chunked:
                sock.sendall(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
            else:
                sock.sendall(CHUNK)
            sent += len(CHUNK)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    status, data = read_response(sock)
    sock.close()
    return status, data, sent


def send_slow_headers(url: str, seconds: float) -> tuple[bool, float]:
    """Send a request head one byte a second; (closed by the server?, seconds until it was)."""
    host, port = url.split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"GET /v2/health/ready HTTP/1.1\r\nHost: {url}\r\nX-Slow: " + "a" * 100
    started = time.monotonic()
    try:
        for byte in head.encode():
            sock.sendall(bytes([byte]))
            time.sleep(1.0)
            if time.monotonic() - started > seconds:
                return False, time.monotonic() - started
    except (BrokenPipeError, ConnectionResetError):
        return True, time.monotonic() - started
    finally:
        sock.close()
    return False, time.monotonic() - started


def send_headers(url: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    host, port = url.split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"GET /v2/health/ready HTTP/1.1\r\nHost: {url}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    try:
        sock.sendall(head.encode())
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, data = read_response(sock)
    sock.close()
    return status, data
