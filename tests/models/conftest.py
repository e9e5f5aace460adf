"""Real loopback servers for the remote backend's tests.

`chat_server` is a real HTTP server (``http.server`` in a thread) on 127.0.0.1 that speaks the OpenAI
API the way vLLM and ``transformers serve`` do; each test sets what it answers and how it dies.
`trickle_server` is a raw socket server that answers one byte at a time. Nothing here is a mock: every
request in these tests crosses a real socket.
"""

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

#: What a dying `ChatServer` does with every scoring request after its last answer.
FAULTS = ("reset", "close", "503", "malformed")


def chat_completion(content, *, logprobs=None, usage=None) -> dict:
    """A chat completion shaped like vLLM's."""
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {"content": [{"token": "A", "logprob": -0.1, "top_logprobs": logprobs}]}
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "loop-model", "choices": [choice],
            "usage": {"prompt_tokens": 120, "completion_tokens": 1, "total_tokens": 121} if usage is None
            else usage}


class ChatServer:
    """A real OpenAI-compatible HTTP server on loopback (``host`` 127.0.0.1 or ::1).

    By default it lists one model (``loop-model``), answers chat completions (``answer 1``, ``answer 2``,
    ... or, when log-probabilities are asked for, letter ``A`` most likely) and ``/v1/systemone`` (the
    first label 0.7). Set ``respond`` to ``f(method, path, body) -> (status, headers, bytes)`` or None to
    change that; `die_after` makes it fail after a number of answers. ``requests`` records every request
    as ``(method, path, headers, raw body)``; header names are lower case. An answer with the header
    ``Connection: close`` (and no ``Content-Length``) ends the body by closing the connection.
    """

    completion = staticmethod(chat_completion)

    def __init__(self, host: str = "127.0.0.1"):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.respond = None
        self.answered = 0
        self.limit: int | None = None
        self.fault: str | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real servers

            def do_GET(self):  # noqa: N802 - http.server's naming
                server._handle(self)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a connection this server broke on purpose

        self._server = Server((host, 0), Handler)
        port = self._server.server_address[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
        self._listening = True
        # a short poll, so that closing (or dying) takes milliseconds, not serve_forever's default 0.5 s
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ test controls
    def die_after(self, answers: int, fault: str) -> None:
        """Answer ``answers`` scoring requests (chat completions, /systemone) in all, then fail the rest.

        ``fault``: ``'reset'`` (TCP reset, then the listening socket closes: later connections are
        refused), ``'close'`` (the connection closes without an answer, then the same), ``'503'`` (HTTP
        503 with a JSON error), or ``'malformed'`` (HTTP 200 with an answer of the wrong shape).
        """
        assert fault in FAULTS
        self.limit, self.fault = answers, fault

    def stop_listening(self) -> None:
        """Close the listening socket: connections already open stay, new ones are refused."""
        with self._lock:
            if not self._listening:
                return
            self._listening = False
        self._server.shutdown()
        self._server.socket.close()

    def close(self) -> None:
        self.stop_listening()
        self._server.server_close()

    # ------------------------------------------------------------------ serving
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        path = urlsplit(handler.path).path  # absolute-form when this server acts as a proxy
        self.requests.append((handler.command, path, {k.lower(): v for k, v in handler.headers.items()}, raw))
        body = json.loads(raw) if raw else None
        if path in ("/v1/chat/completions", "/v1/systemone"):
            with self._lock:
                dead = self.limit is not None and self.answered >= self.limit
                if not dead:
                    self.answered += 1
            if dead:
                return self._fail(handler, path, body)
        answer = self.respond(handler.command, path, body) if self.respond is not None else None
        if answer is None:
            answer = self._default(handler.command, path, body)
        status, headers, content = answer
        if headers.get("Connection") == "close":
            handler.close_connection = True
        handler.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(content)),
                            **headers}.items():
            if value is not None:
                handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(content)

    def _default(self, method: str, path: str, body) -> tuple[int, dict, bytes]:
        if method == "GET" and path == "/v1/models":
            data = {"object": "list", "data": [{"id": "loop-model", "object": "model"}]}
        elif method == "POST" and path == "/v1/chat/completions":
            with self._lock:
                number = len([r for r in self.requests if r[1] == path])
            if body.get("logprobs"):
                data = chat_completion("A", logprobs=[{"token": "A", "logprob": -0.1},
                                                      {"token": "B", "logprob": -2.5}])
            else:
                data = chat_completion(f"answer {number}")
        elif method == "POST" and path == "/v1/systemone":
            labels = list(body["questions"]["label"]["criteria"])
            rest = 0.3 / max(1, len(labels) - 1)
            data = {"model": body.get("model"), "usage": {"input_tokens": 130, "output_tokens": 0},
                    "answers": {"label": {"probabilities": {label: (0.7 if i == 0 else rest)
                                                            for i, label in enumerate(labels)}}}}
        else:
            return 404, {}, json.dumps({"detail": "Not Found"}).encode()
        return 200, {}, json.dumps(data).encode()

    def _fail(self, handler: BaseHTTPRequestHandler, path: str, body) -> None:
        if self.fault in ("reset", "close"):
            if self.fault == "reset":
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.close_connection = True
            handler.connection.close()
            threading.Thread(target=self.stop_listening, daemon=True).start()
            return
        if self.fault == "503":
            status, data = 503, {"error": {"message": "CUDA error: an illegal memory access was encountered"}}
        elif path == "/v1/chat/completions" and body.get("logprobs"):
            status, data = 200, chat_completion("A", logprobs=[{"token": "A", "logprob": "high"}])
        elif path == "/v1/chat/completions":
            status, data = 200, {"choices": [{"message": {"role": "assistant", "content": 5}}]}
        else:
            status, data = 200, {"answers": {"label": {"probabilities": "high"}}}
        content = json.dumps(data).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)


@pytest.fixture()
def chat_server():
    """A `ChatServer` on 127.0.0.1, closed after the test."""
    server = ChatServer()
    yield server
    server.close()


@pytest.fixture()
def ipv6_chat_server():
    """A `ChatServer` on ::1 (skips where this machine has no IPv6 loopback)."""
    try:
        server = ChatServer("::1")
    except OSError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    yield server
    server.close()


class TrickleServer:
    """A raw TCP server on 127.0.0.1 that reads a request and answers one byte every ``interval`` seconds.

    ``mode='body'`` sends complete headers (a 100 000-byte JSON body announced) and then trickles the
    body; ``mode='headers'`` trickles from the status line on. After ``give_up`` seconds it closes the
    connection unfinished, so that a client without a total deadline fails a test instead of hanging it.
    """

    def __init__(self, mode: str, interval: float, give_up: float = 8.0):
        self.mode, self.interval, self.give_up = mode, interval, give_up
        self.connections = 0
        self.sent: list[int] = []  # bytes trickled on each connection
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._trickle, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _trickle(self, connection: socket.socket) -> None:
        index = len(self.sent)
        self.sent.append(0)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        body = b'{"choices": [{"message": {"content": "' + b"x" * 99950
        with connection:
            connection.settimeout(1.0)
            try:
                connection.recv(1 << 20)  # the request (headers and the small JSON body)
                if self.mode == "body":
                    connection.sendall(head)
                    stream = body
                else:
                    stream = head + body
                end = time.monotonic() + self.give_up
                for byte in stream:
                    if self._stop.wait(self.interval) or time.monotonic() > end:
                        return
                    connection.sendall(bytes([byte]))
                    self.sent[index] += 1
            except OSError:  # the client gave up and closed the connection
                return

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self._listener.close()


@pytest.fixture()
def trickle_server():
    """``trickle_server(mode, interval)``: a started `TrickleServer`, closed after the test."""
    servers = []

    def start(mode: str = "body", interval: float = 1.0) -> TrickleServer:
        servers.append(TrickleServer(mode, interval))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
