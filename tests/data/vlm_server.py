"""A real HTTP server on loopback that speaks OpenAI chat-completions with scripted replies.

Replies are chosen by request content: the key of a request is its image data URL when it
has one, else its last user text. Each key has a queue of ``Reply`` objects, served in order;
the last one repeats. Unknown keys get ``default``. Every request is recorded (headers and
JSON body) for the tests to inspect.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer: assistant text with HTTP 200, or an error status."""

    content: str = ""
    status: int = 200
    delay: float = 0.0  # seconds before answering (to trigger client timeouts)
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # raw body for errors (default: a JSON error object)


def request_key(body: dict[str, Any]) -> str:
    """The image data URL of the last user turn, else its text."""
    for msg in reversed(body.get("messages", [])):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        for part in content:
            if part.get("type") == "image_url":
                return part["image_url"]["url"]
        return "".join(p.get("text", "") for p in content)
    return ""


class FakeVLM:
    """Start with ``FakeVLM().start()``; ``url`` is the API base; ``stop()`` shuts it down."""

    def __init__(self, default: Reply | None = None) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.default = default or Reply(status=404, body='{"error": "no scripted reply"}')
        self.requests: list[dict[str, Any]] = []  # {"headers": {...}, "body": {...}, "key": str}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                key = request_key(body)
                with fake.lock:
                    fake.requests.append(
                        {"headers": dict(self.headers), "body": body, "key": key, "path": self.path}
                    )
                    queue = fake.script.get(key)
                    if queue:
                        reply = queue.pop(0) if len(queue) > 1 else queue[0]
                    else:
                        reply = fake.default
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status == 200:
                    payload = json.dumps(
                        {
                            "id": "chatcmpl-test",
                            "object": "chat.completion",
                            "model": body.get("model"),
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": reply.content},
                                    "finish_reason": "stop",
                                }
                            ],
                        }
                    ).encode()
                else:
                    payload = (reply.body or json.dumps({"error": {"code": reply.status}})).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeVLM:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def add(self, key: str, *replies: Reply) -> None:
        with self.lock:
            self.script[key] = list(replies)

    def keys_requested(self) -> list[str]:
        with self.lock:
            return [r["key"] for r in self.requests]
