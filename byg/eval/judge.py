"""The VLM judge: one callable ``judge(prompt, images) -> reply text``.

Any OpenAI-compatible chat-completions server works (the paper serves Qwen2.5-VL-72B with
vLLM). Transport, timeouts, retries with backoff and API-key handling come from
``byg.data.vlm.ChatClient``; this module only packs several in-memory images and one text
prompt into a user turn, and pins sampling to greedy so that a score is reproducible.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from byg.data.vlm import ChatClient, VLMConfig, VLMError

#: ``judge(prompt, images) -> reply``: the whole interface VIEScore needs
Judge = Callable[[str, Sequence[Image.Image]], str]


def pil_to_data_url(image: Image.Image) -> str:
    """A lossless ``data:image/png;base64,...`` URL of ``image`` (RGB)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def judge_message(prompt: str, images: Sequence[Image.Image]) -> dict[str, Any]:
    """One user turn: the images in order, then the prompt (OpenAI content parts)."""
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": pil_to_data_url(im)}} for im in images
    ]
    parts.append({"type": "text", "text": prompt})
    return {"role": "user", "content": parts}


class OpenAIJudge:
    """A VLM judge behind an OpenAI-compatible endpoint.

    Args:
        endpoint: API base (``http://localhost:8000/v1``) or full ``/chat/completions`` URL.
        model: the model name the server serves (``Qwen/Qwen2.5-VL-72B-Instruct``).
        api_key_env: environment variable holding the key (unset: no auth header).
        timeout: seconds per HTTP attempt.
        max_retries: extra attempts on timeouts, connection errors, 408/429 and 5xx.
        backoff: first backoff in seconds (doubles per retry).
        max_tokens: reply budget; VIEScore answers are short.
        api_key: explicit key (tests); overrides ``api_key_env``.
    """

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_tokens: int = 512,
        api_key: str | None = None,
    ) -> None:
        self.model = model
        self.client = ChatClient(
            VLMConfig(
                endpoint=endpoint,
                model=model,
                api_key_env=api_key_env,
                timeout=timeout,
                max_retries=max_retries,
                backoff=backoff,
                temperature=0.0,  # greedy: the same triple gets the same score
                max_tokens=max_tokens,
            ),
            api_key=api_key,
        )

    def __call__(self, prompt: str, images: Sequence[Image.Image]) -> str:
        """Send ``images`` then ``prompt``; return the reply text.

        Raises:
            VLMError: the server failed for good (after retries, or a non-retryable status).
        """
        return self.client.chat([judge_message(prompt, images)])

    @property
    def requests_sent(self) -> int:
        """HTTP attempts so far (retries included)."""
        return self.client.requests_sent


__all__ = ["Judge", "OpenAIJudge", "VLMError", "judge_message", "pil_to_data_url"]
