"""A web server on 127.0.0.1 for tests of the online sources: it serves given bytes at
given paths, and misbehaves on request (404, a stalled transfer, a web page, a trickle).
"""

import http.server
import threading

#: What a captive portal answers for every URL.
PORTAL_PAGE = (
    b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Wi-Fi</body></html>"
)
_TYPES = {".txt": "text/plain", ".jpg": "image/jpeg", ".png": "image/png"}


class Loopback:
    """``files`` maps URL paths to bytes; ``mode`` is "serve", "404" (every path),
    "stall" (headers and a first piece, then silence) or "html" (a portal page for every
    path); paths in ``slow`` trickle out in 4 kB pieces 20 ms apart, and paths in
    ``unsized`` come without a Content-Length. ``requests`` lists the paths asked for.
    Stalls and trickles end at :meth:`close`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "serve"
        self.slow: set[str] = set()
        self.unsized: set[str] = set()
        self.requests: list[str] = []
        self.released = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 -- the http.server API
                server.requests.append(self.path)
                try:
                    server._answer(self)
                except OSError:  # the client hung up (a time-out, a killed process)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def _answer(self, request: http.server.BaseHTTPRequestHandler) -> None:
        if self.mode == "html":
            self._send(request, PORTAL_PAGE, "text/html")
            return
        payload = self.files.get(request.path)
        if payload is None or self.mode == "404":
            request.send_error(404)
            return
        kind = _TYPES.get(request.path[request.path.rfind(".") :], "")
        if self.mode == "stall":
            self._send(request, payload, kind or "application/octet-stream", stop=1000)
            self.released.wait(30)
        elif request.path in self.slow:
            self._send(request, payload, kind or "application/octet-stream", piece=4096)
        else:
            self._send(request, payload, kind or "application/octet-stream")

    def _send(self, request, payload, kind, stop=None, piece=None) -> None:
        request.send_response(200)
        request.send_header("Content-Type", kind)
        if request.path not in self.unsized:
            request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if piece is None:
            request.wfile.write(payload[:stop])
            request.wfile.flush()
            return
        for start in range(0, len(payload), piece):
            request.wfile.write(payload[start : start + piece])
            request.wfile.flush()
            if self.released.wait(0.02):
                return

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
