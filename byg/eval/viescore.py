"""VIEScore for instruction editing, as GEdit-Bench uses it (Ku et al. 2024; Liu et al. 2025).

For one ``(source, instruction, edited)`` triple a VLM judge answers two queries:

* semantic consistency (source and edited images, and the instruction): an editing-success
  score and an over-editing score, each 0-10; ``SC = min`` of the two;
* perceptual quality (the edited image alone): a naturalness score and an artifact score,
  each 0-10; ``PQ = min`` of the two;

and ``Overall = sqrt(SC * PQ)``. The edited image is resized to the source size before
judging. Benchmark scores average per-sample ``SC``, ``PQ`` and ``Overall`` within each task
type, then average those task means (every type weighs the same, whatever its size).

The prompts below restate VIEScore's rules in our own words; pass ``--prompts FILE`` to use
other wording (e.g. the official text, for numbers comparable with published tables).
Replies are parsed robustly (bare JSON, markdown fences, JSON amid prose, single quotes,
scores given as strings); a reply that still yields no valid score list is asked again,
and after ``parse_retries`` re-asks the sample is recorded as failed (kept out of means,
counted in the report, retried on the next run). Results go to a JSONL file, one line per
judged sample, appended as they finish, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import ast
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from byg.data.vlm import JSONExtractError, extract_json_object
from byg.eval.judge import Judge

SCORE_MIN, SCORE_MAX = 0.0, 10.0

CONTEXT = """You are an expert judge of AI-edited images. Score the image(s) you are shown \
by the rules below. Every image, and every person in it, is synthetic.

Answer with one JSON object and nothing else, in this form (keep the reasoning short):
{"score": [...], "reasoning": "..."}"""

SC_RULES = """You are shown two images: first the original, then an edited version of it. \
Judge how well the second image carries out the editing instruction. The two images may be \
identical when the edit failed.

Give two scores, each an integer from 0 to 10:
1. editing success: 0 if the edited image does not follow the instruction at all, 10 if it \
follows it perfectly;
2. over-editing: 0 if the edited image is entirely different from the original, 10 if it \
changes only what the instruction asks for, as little as possible yet effectively.
Answer "score": [editing_success, over_editing].

Editing instruction: {instruction}"""

PQ_RULES = """You are shown one AI-generated image. Judge its perceptual quality.

Give two scores, each an integer from 0 to 10:
1. naturalness: 0 if the scene looks unnatural (wrong perspective, scale, shadows or \
lighting), 10 if it looks entirely natural;
2. artifacts: 0 if large parts are distorted, blurred, scratched or watermarked, faces or \
bodies are malformed, or objects do not blend in; 10 if there are no artifacts.
Answer "score": [naturalness, artifacts]."""


@dataclass(frozen=True)
class VIEPrompts:
    """The judge's wording: a shared context plus the SC and PQ rules.

    ``sc`` must contain ``{instruction}``; both queries are sent as ``context + rules``.
    """

    context: str = CONTEXT
    sc: str = SC_RULES
    pq: str = PQ_RULES

    def __post_init__(self) -> None:
        if "{instruction}" not in self.sc:
            raise ValueError("the SC prompt must contain the placeholder {instruction}")

    def sc_prompt(self, instruction: str) -> str:
        return f"{self.context}\n\n{self.sc.replace('{instruction}', instruction)}"

    def pq_prompt(self) -> str:
        return f"{self.context}\n\n{self.pq}"


def load_prompts(path: str | Path) -> VIEPrompts:
    """Prompts from a JSON file with keys ``context``, ``sc``, ``pq`` (each optional)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file {str(p)!r} does not exist")
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object with keys context/sc/pq")
    unknown = set(data) - {"context", "sc", "pq"}
    if unknown:
        raise ValueError(f"{p}: unknown prompt keys {sorted(unknown)}; allowed: context, sc, pq")
    return VIEPrompts(**data)


# ----------------------------------------------------------------------------- parsing


class ScoreParseError(ValueError):
    """A judge reply holds no valid score list."""


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _brace_spans(text: str) -> list[str]:
    """Innermost-first ``{...}`` spans without nested braces (enough for a score object)."""
    return re.findall(r"\{[^{}]*\}", text, flags=re.DOTALL)


def _reply_object(text: str) -> dict[str, Any]:
    """The object in a reply: strict JSON first (fences, prose), then Python-literal dicts."""
    try:
        return extract_json_object(text, required_keys=("score",))
    except JSONExtractError:
        pass
    for span in _brace_spans(text):
        try:
            obj = ast.literal_eval(span)  # single quotes: {'score': [7, 8]}
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    raise ScoreParseError(f"no JSON object in reply: {text[:200]!r}")


def _as_float(x: Any, reply: str) -> float:
    if isinstance(x, bool):
        raise ScoreParseError(f"score {x!r} is not a number in reply: {reply[:200]!r}")
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str) and _NUMBER.fullmatch(x.strip()):
        return float(x.strip())
    raise ScoreParseError(f"score {x!r} is not a number in reply: {reply[:200]!r}")


def parse_scores(reply: str | None, n: int = 2) -> list[float]:
    """The ``n`` scores in a VIEScore reply ``{"score": [...], "reasoning": "..."}``.

    Accepts bare JSON, a markdown fence, JSON amid prose, single-quoted (Python-literal)
    objects, and scores given as strings (``"score": "[7, 8]"`` or ``["7", "8"]``).

    Raises:
        ScoreParseError: no object, no ``score`` key, wrong count, non-numbers, or a score
            outside ``[0, 10]`` (never clipped: an out-of-range score is a bad reply).
    """
    if not reply or not reply.strip():
        raise ScoreParseError("empty reply")
    obj = _reply_object(reply)
    if "score" not in obj:
        raise ScoreParseError(f"reply object has no 'score' key: {reply[:200]!r}")
    raw = obj["score"]
    if isinstance(raw, str):
        text = raw.strip()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            raw = _NUMBER.findall(text)  # "7, 8"
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list):
        raise ScoreParseError(f"'score' is not a list: {raw!r} in reply {reply[:200]!r}")
    scores = [_as_float(x, reply) for x in raw]
    if len(scores) != n:
        raise ScoreParseError(f"expected {n} scores, got {scores} in reply {reply[:200]!r}")
    for s in scores:
        if not (math.isfinite(s) and SCORE_MIN <= s <= SCORE_MAX):
            raise ScoreParseError(f"score {s} outside [0, 10] in reply {reply[:200]!r}")
    return scores


# ----------------------------------------------------------------------------- one sample


@dataclass
class SampleScore:
    """VIEScore of one triple. ``sc_scores = [success, over_editing]``, ``pq_scores =
    [naturalness, artifacts]``; ``sc``, ``pq`` their minima; ``overall = sqrt(sc * pq)``."""

    sc_scores: list[float]
    pq_scores: list[float]
    sc_reply: str = ""
    pq_reply: str = ""

    @property
    def sc(self) -> float:
        return min(self.sc_scores)

    @property
    def pq(self) -> float:
        return min(self.pq_scores)

    @property
    def overall(self) -> float:
        return math.sqrt(self.sc * self.pq)


def _ask(judge: Judge, prompt: str, images: Sequence[Image.Image], retries: int) -> tuple:
    """(scores, reply): ask, and ask again while the reply does not parse."""
    err: ScoreParseError | None = None
    reply = ""
    for _ in range(retries + 1):
        reply = judge(prompt, images)
        try:
            return parse_scores(reply), reply
        except ScoreParseError as e:
            err = e
    raise ScoreParseError(f"{retries + 1} replies failed to parse; last: {err}")


def score_triple(
    judge: Judge,
    source: Image.Image,
    edited: Image.Image,
    instruction: str,
    *,
    prompts: VIEPrompts | None = None,
    parse_retries: int = 2,
) -> SampleScore:
    """Judge one edit: the SC query on (source, edited resized to source size), then PQ.

    Raises:
        ScoreParseError: a query gave no valid scores in ``parse_retries + 1`` replies.
    """
    prompts = prompts or VIEPrompts()
    source = source.convert("RGB")
    edited = edited.convert("RGB")
    if edited.size != source.size:
        edited = edited.resize(source.size, Image.Resampling.BICUBIC)
    sc, sc_reply = _ask(judge, prompts.sc_prompt(instruction), [source, edited], parse_retries)
    pq, pq_reply = _ask(judge, prompts.pq_prompt(), [edited], parse_retries)
    return SampleScore(sc, pq, sc_reply, pq_reply)


# ----------------------------------------------------------------------------- a benchmark


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB, with an error naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {str(p)!r} does not exist")
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types for corrupt files
        raise ValueError(f"cannot decode image {str(p)!r}: {e}") from e


@dataclass
class EvalSample:
    """One triple to judge. ``id`` is unique within a run (``task/lang/key`` for GEdit);
    ``load_source`` returns the source image; ``meta`` is copied into the result row."""

    id: str
    task_type: str
    instruction: str
    edited_path: Path
    load_source: Callable[[], Image.Image]
    meta: dict[str, Any] = field(default_factory=dict)


def read_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows of a results JSONL keyed by ``id`` (a later line for the same id wins).

    A truncated last line (a run killed mid-write) is cut off the file with a warning, so
    the next append starts on a clean line; a malformed line elsewhere is an error.
    """
    p = Path(path)
    if not p.exists():
        return {}
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    rows: dict[str, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # no newline after it: an interrupted write
                keep = len(raw) - len(line)
                print(f"warning: {p}: dropping a truncated last line ({len(line)} bytes)")
                with open(p, "r+b") as f:
                    f.truncate(keep)
                break
            raise ValueError(f"{p}:{i + 1}: malformed results line: {e}") from e
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{p}:{i + 1}: results line has no 'id'")
        rows[row["id"]] = row
    return rows


def run_viescore(
    samples: Iterable[EvalSample],
    judge: Judge,
    results_path: str | Path,
    *,
    judge_name: str,
    prompts: VIEPrompts | None = None,
    workers: int = 4,
    parse_retries: int = 2,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Judge every sample not yet scored in ``results_path``; return one row per sample.

    Samples already in the file without an error are skipped (resume); failed ones are
    judged again. Judge transport failures (server down after retries) abort the run: what
    was written stays and the next run continues from it.

    Args:
        samples: the triples, with unique ids.
        judge: ``judge(prompt, images) -> reply``.
        results_path: JSONL file, appended to.
        judge_name: recorded in every row; a file scored by another judge is refused.
        workers: concurrent samples (the judge is I/O bound).
        parse_retries: re-asks per query when a reply does not parse.

    Returns:
        The rows for ``samples``, in their order.
    """
    samples = list(samples)
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise ValueError(f"duplicate sample id {s.id!r}")
        seen.add(s.id)
    missing = [s for s in samples if not Path(s.edited_path).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(samples)} edited images are missing, e.g. "
            f"{str(missing[0].edited_path)!r}; run `byg eval run` first"
        )
    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_results(results_path)
    other = {r.get("judge") for r in done.values()} - {judge_name}
    if other:
        raise ValueError(
            f"{results_path} holds scores from judge(s) {sorted(map(str, other))}, not "
            f"{judge_name!r}; use another --out file"
        )
    todo = [s for s in samples if s.id not in done or done[s.id].get("error")]
    lock = threading.Lock()

    def work(s: EvalSample) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": s.id,
            "task_type": s.task_type,
            "instruction": s.instruction,
            "edited": str(s.edited_path),
            "judge": judge_name,
            **s.meta,
        }
        try:
            res = score_triple(
                judge,
                s.load_source(),
                open_rgb(s.edited_path),
                s.instruction,
                prompts=prompts,
                parse_retries=parse_retries,
            )
        except ScoreParseError as e:
            return {**row, "error": str(e)}
        return {
            **row,
            "sc_scores": res.sc_scores,
            "pq_scores": res.pq_scores,
            "sc": res.sc,
            "pq": res.pq,
            "overall": res.overall,
            "sc_reply": res.sc_reply,
            "pq_reply": res.pq_reply,
            "error": None,
        }

    with (
        open(results_path, "a", encoding="utf-8") as f,
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
    ):
        futures = [pool.submit(work, s) for s in todo]
        bar = tqdm(total=len(todo), desc="viescore", disable=not progress, unit="sample")
        try:
            for fut in as_completed(futures):
                row = fut.result()
                with lock:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                done[row["id"]] = row
                bar.update(1)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        finally:
            bar.close()
    return [done[s.id] for s in samples]


def aggregate(rows: Iterable[dict[str, Any]], group: str = "task_type") -> dict[str, Any]:
    """Per-group means of ``sc``, ``pq``, ``overall``, then their unweighted mean.

    Failed rows (``error`` set) are left out of the means and counted in ``failed``. A
    group whose rows all failed has ``None`` means and does not enter the overall mean.

    Returns:
        ``{"groups": {name: {"sc", "pq", "overall", "n", "failed"}}, "sc", "pq", "overall",
        "n", "failed"}``, groups sorted by name.
    """
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if group not in r:
            raise ValueError(f"result row {r.get('id')!r} has no field {group!r}")
        by.setdefault(str(r[group]), []).append(r)
    groups: dict[str, dict[str, Any]] = {}
    for name in sorted(by):
        ok = [r for r in by[name] if not r.get("error")]
        stats: dict[str, Any] = {"n": len(ok), "failed": len(by[name]) - len(ok)}
        for k in ("sc", "pq", "overall"):
            stats[k] = sum(float(r[k]) for r in ok) / len(ok) if ok else None
        groups[name] = stats
    scored = [g for g in groups.values() if g["n"]]
    out: dict[str, Any] = {
        "groups": groups,
        "n": sum(g["n"] for g in groups.values()),
        "failed": sum(g["failed"] for g in groups.values()),
    }
    for k in ("sc", "pq", "overall"):
        out[k] = sum(g[k] for g in scored) / len(scored) if scored else None
    return out


__all__ = [
    "VIEPrompts",
    "load_prompts",
    "ScoreParseError",
    "parse_scores",
    "SampleScore",
    "score_triple",
    "open_rgb",
    "EvalSample",
    "read_results",
    "run_viescore",
    "aggregate",
]
