"""A small client for OpenAI-compatible chat-completions servers (vLLM, SGLang, Ollama, hosted).

Only the standard library is used. One ``ChatClient.chat`` call is one logical request:
it is retried with exponential backoff on timeouts, connection errors, HTTP 408/429 and
5xx (honouring ``Retry-After``), and fails at once on other HTTP errors (400, 401, ...).
Concurrency is the caller's business (``byg.data.generate`` runs a thread pool); the
client is thread-safe.

The API key is read from an environment variable at construction, sent only as a bearer
header, and scrubbed from every error message, so it never reaches logs or output files.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

log = logging.getLogger("byg.data.vlm")


class VLMError(RuntimeError):
    """A request failed for good (after retries, or with a non-retryable status)."""


class JSONExtractError(ValueError):
    """No JSON object could be found in a model reply."""


@dataclass
class VLMConfig:
    """How to reach the server and how hard to try.

    ``endpoint`` is the API base (``http://localhost:8000/v1``) or the full
    ``.../chat/completions`` URL. ``api_key_env`` names the environment variable that
    holds the key (unset or empty: no ``Authorization`` header, fine for a local server).
    Backoff before retry ``a`` (0-based) is ``min(backoff_max, backoff * 2**a)``, scaled by a
    random factor in ``[0.5, 1]``, or the server's ``Retry-After`` when it is shorter than
    ``backoff_max``.
    """

    endpoint: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0  # seconds per HTTP attempt
    max_retries: int = 4  # extra attempts after the first
    backoff: float = 1.0  # seconds
    backoff_max: float = 30.0
    concurrency: int = 8
    temperature: float = 0.7
    max_tokens: int = 2048
    extra_body: dict[str, Any] = field(default_factory=dict)  # merged into every request

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {self.endpoint!r}")
        if not self.model:
            raise ValueError("model must be given (the name the server serves)")
        for name in ("timeout", "backoff_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.backoff < 0 or self.max_retries < 0:
            raise ValueError("backoff and max_retries must be >= 0")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")


def chat_url(endpoint: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000/v1/chat/completions`` (full URLs kept)."""
    endpoint = endpoint.rstrip("/")
    if endpoint.endswith("/chat/completions"):
        return endpoint
    return endpoint + "/chat/completions"


def image_to_data_url(path: str | Path, max_side: int = 1024, quality: int = 90) -> str:
    """A ``data:image/jpeg;base64,...`` URL of the image, downscaled to ``max_side``.

    Deterministic: the same file and settings give the same string.
    """
    with Image.open(path) as im:
        im = im.convert("RGB")
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def user_message(text: str, image_url: str | None = None) -> dict[str, Any]:
    """One user turn: text, optionally followed by an image (OpenAI content-parts format)."""
    if image_url is None:
        return {"role": "user", "content": text}
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "text", "text": text},
        ],
    }


# ----------------------------------------------------------------------------- JSON parsing

_THINK = re.compile(r"<think>.*?</think>", flags=re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", flags=re.DOTALL)


def _balanced_objects(text: str) -> list[str]:
    """Every top-level ``{...}`` span in ``text``, braces inside JSON strings ignored."""
    spans, depth, start, in_str, escape = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def extract_json_object(text: str, required_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object in a model reply: bare, in a markdown fence, or amid prose.

    ``<think>...</think>`` blocks (reasoning models) are dropped first. Candidates are tried
    in order (whole text, fenced blocks, balanced ``{...}`` spans); the first object that
    has all ``required_keys`` wins, else the first object at all.

    Raises:
        JSONExtractError: no candidate parses as a JSON object.
    """
    text = _THINK.sub("", text).strip()
    if "</think>" in text:  # an unopened closing tag: the reasoning preceded it
        text = text.split("</think>")[-1]
    candidates = [text] + _FENCE.findall(text)
    for block in list(candidates):
        candidates += _balanced_objects(block)
    found = []
    for c in candidates:
        try:
            obj = json.loads(c)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            if all(k in obj for k in required_keys):
                return obj
            found.append(obj)
    if found:
        return found[0]
    snippet = text[:200].replace("\n", " ")
    raise JSONExtractError(f"no JSON object in reply: {snippet!r}")


# ----------------------------------------------------------------------------- client


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ChatClient:
    """Blocking chat-completions calls with timeouts, retries and backoff.

    Args:
        config: server and retry settings.
        api_key: overrides the environment variable (tests); never logged.
    """

    def __init__(self, config: VLMConfig, api_key: str | None = None) -> None:
        self.config = config
        self.url = chat_url(config.endpoint)
        self._api_key = api_key if api_key is not None else os.environ.get(config.api_key_env)
        self.requests_sent = 0  # HTTP attempts, for progress and tests
        self._lock = threading.Lock()

    def _scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _attempt(self, body: bytes) -> str:
        req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        with self._lock:
            self.requests_sent += 1
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            if e.code in (408, 429) or e.code >= 500:
                retry_after = _parse_retry_after(e.headers.get("Retry-After"))
                raise _Retryable(f"HTTP {e.code}: {detail}", retry_after) from None
            raise VLMError(f"HTTP {e.code} from {self.url}: {detail}") from None
        except TimeoutError as e:
            raise _Retryable(f"timed out after {self.config.timeout}s") from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                raise _Retryable(f"timed out after {self.config.timeout}s") from e
            raise _Retryable(f"connection failed: {reason}") from e
        try:
            data = json.loads(payload)
            content = data["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            raise _Retryable(f"malformed response: {payload[:200]!r}") from e
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise _Retryable(f"response has no text content: {payload[:200]!r}")
        return content

    def chat(self, messages: list[dict[str, Any]], **overrides: Any) -> str:
        """Send one chat request and return the assistant's text.

        Args:
            messages: OpenAI-format messages.
            **overrides: request fields (``temperature``, ``max_tokens``, ...).

        Raises:
            VLMError: a non-retryable HTTP error, or every attempt failed.
        """
        cfg = self.config
        request = {
            "model": cfg.model,
            "messages": messages,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
            **cfg.extra_body,
            **overrides,
        }
        body = json.dumps(request).encode("utf-8")
        last = ""
        for attempt in range(cfg.max_retries + 1):
            try:
                return self._attempt(body)
            except _Retryable as e:
                last = self._scrub(str(e))
                if attempt == cfg.max_retries:
                    break
                delay = min(cfg.backoff_max, cfg.backoff * 2**attempt) * random.uniform(0.5, 1.0)
                if e.retry_after is not None:
                    delay = min(cfg.backoff_max, max(delay, e.retry_after))
                log.info("retrying in %.2fs after: %s", delay, last)
                time.sleep(delay)
            except VLMError as e:
                raise VLMError(self._scrub(str(e))) from None
        raise VLMError(f"{cfg.max_retries + 1} attempt(s) failed; last: {last}")


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff
