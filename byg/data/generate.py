"""Edit specifications from a vision-language model, and captions for synthetic videos.

Image mode (the paper's Appendix D.1), per source image:

1. draw a small subset of allowed edit types (``CategorySampler``): weights are a fixed
   priority (remove and replace slightly favoured) times an online balancing term that
   favours types kept less often so far in this run;
2. for a non-photorealistic source, with probability ``force_photoreal_prob``, allow only
   ``style_change`` to a photorealistic result;
3. ask the VLM (image + prompt) for one JSON object with ``edit_type, src_caption,
   instruction, tgt_caption, reverse_instruction``;
4. parse it robustly, keep it only if every field is present and the rules of
   ``byg.data.tuples.row_problems`` hold (reverse instruction self-contained, target caption
   plain and positive, edit type among the allowed ones); log every rejection with its rule;
5. append the row to ``metadata.jsonl`` at once (fsync'd), so a stopped run resumes.

Video mode (Appendix D.2): detailed captions are stripped of style hints by the model in
text-only mode, then wrapped in a template with a randomly chosen style; each row also
carries the style-conversion edit (to another style) that ``byg data synth-videos`` turns into
a training clip with the base text-to-video model.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byg.data.tuples import (
    IMAGE_EXTENSIONS,
    METADATA_NAME,
    DataError,
    EditRow,
    reverse_instruction_problem,
    row_problems,
    write_rows,
)
from byg.data.vlm import (
    ChatClient,
    JSONExtractError,
    VLMError,
    extract_json_object,
    image_to_data_url,
    user_message,
)

log = logging.getLogger("byg.data.generate")

LOG_NAME = "generate_log.jsonl"
#: the fields the VLM must return, in the order the prompt asks for them
SPEC_FIELDS = ("edit_type", "src_caption", "instruction", "tgt_caption", "reverse_instruction")

# ----------------------------------------------------------------------------- taxonomy


@dataclass(frozen=True)
class EditCategory:
    """One edit type: its name in the JSON, the guidance the model sees, its priority."""

    name: str
    description: str
    priority: float = 1.0


#: the ten edit types of the paper's taxonomy; remove and replace slightly over-sampled
TAXONOMY: tuple[EditCategory, ...] = (
    EditCategory(
        "color_change",
        "give the main object, or the whole background, a clearly different color",
    ),
    EditCategory(
        "texture_material_change",
        "make the main object look made of a different material or have a different surface "
        "texture (wood, glass, metal, fur, knitted wool, ...)",
    ),
    EditCategory(
        "shape_adjustment",
        "visibly change the form or proportions of the main object (taller, rounder, bent, ...)",
    ),
    EditCategory("add", "add one new, clearly visible object that fits the scene"),
    EditCategory("remove", "take away one prominent object; fill its place plausibly", 1.25),
    EditCategory("replace", "swap one prominent object for a different kind of object", 1.25),
    EditCategory(
        "background_change",
        "put the subject in a different setting, replacing the whole background",
    ),
    EditCategory(
        "style_change",
        "render the whole image in a different visual style, keeping its content and layout",
    ),
    EditCategory(
        "action_pose_change",
        "change what a person or animal is doing, or its pose or facial expression",
    ),
    EditCategory(
        "text_manipulation",
        "change, add or remove legible text on a sign, label, screen or object",
    ),
)
CATEGORY_NAMES = tuple(c.name for c in TAXONOMY)
#: artistic styles offered for style edits
STYLES = (
    "watercolor painting",
    "oil painting",
    "anime",
    "ukiyo-e woodblock print",
    "charcoal drawing",
    "pencil sketch",
    "pixel art",
    "comic book",
    "impressionist painting",
    "stained glass",
    "low-poly 3D render",
    "claymation",
)
PHOTOREALISTIC = "photorealistic"


def canonical_edit_type(text: str) -> str:
    """``"Texture/Material change"`` -> ``"texture_material_change"`` (case, separators)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class CategorySampler:
    """Draws the allowed subset of edit types per image.

    The weight of type ``c`` is ``priority_c * ((1 + mean_u) / (1 + u_c)) ** balance`` where
    ``u_c`` counts the kept rows of type ``c`` so far (``record``) and ``mean_u`` is the mean
    count. With ``balance = 0`` the weights are the priorities; larger values push harder
    towards types that are under-represented. A subset of ``k`` types is drawn without
    replacement, one at a time, each proportional to the weights of those not yet drawn.

    Args:
        categories: the taxonomy.
        k: types per subset.
        balance: exponent of the usage-balancing term.
        rng: the random source (seed it for reproducible runs).
    """

    def __init__(
        self,
        categories: Sequence[EditCategory] = TAXONOMY,
        k: int = 3,
        balance: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= k <= len(categories):
            raise ValueError(f"k must be in [1, {len(categories)}], got {k}")
        if balance < 0:
            raise ValueError(f"balance must be >= 0, got {balance}")
        for c in categories:
            if c.priority <= 0:
                raise ValueError(f"priority of {c.name!r} must be positive, got {c.priority}")
        self.categories = tuple(categories)
        self.k, self.balance = k, balance
        self.rng = rng or random.Random()
        self.usage: Counter[str] = Counter()

    def weights(self) -> dict[str, float]:
        """Current unnormalised weight of every type."""
        mean = sum(self.usage[c.name] for c in self.categories) / len(self.categories)
        return {
            c.name: c.priority * ((1.0 + mean) / (1.0 + self.usage[c.name])) ** self.balance
            for c in self.categories
        }

    def sample(self) -> list[str]:
        """``k`` distinct type names, in draw order."""
        weights = self.weights()
        chosen: list[str] = []
        for _ in range(self.k):
            names = [n for n in weights if n not in chosen]
            chosen.append(self.rng.choices(names, weights=[weights[n] for n in names])[0])
        return chosen

    def record(self, edit_type: str) -> None:
        """Count one kept row of ``edit_type`` (unknown names are ignored)."""
        if edit_type in {c.name for c in self.categories}:
            self.usage[edit_type] += 1


def inclusion_probabilities(weights: dict[str, float], k: int) -> dict[str, float]:
    """Exact probability that each type is in a ``CategorySampler`` subset (enumeration).

    Used to check the sampler; cost grows as ``len(weights)**k``.
    """
    names = list(weights)
    out = dict.fromkeys(names, 0.0)

    def walk(prefix: list[str], p: float) -> None:
        if len(prefix) == k:
            for n in prefix:
                out[n] += p
            return
        rest = [n for n in names if n not in prefix]
        total = sum(weights[n] for n in rest)
        for n in rest:
            walk(prefix + [n], p * weights[n] / total)

    walk([], 1.0)
    return out


# ----------------------------------------------------------------------------- prompt

SYSTEM_PROMPT = (
    "You design training examples for an instruction-driven image editor. Given one image, "
    "you propose a single edit and describe it from both directions: how to perform it, and "
    "how to get from the edited picture to the one you were shown, using only what is visible "
    "in the edited picture. You answer with one JSON object and no other text."
)


def build_edit_prompt(
    allowed: Sequence[str],
    style: str | None = None,
    *,
    force_photoreal: bool = False,
    non_photoreal: bool = False,
    caption_hint: str | None = None,
) -> str:
    """The user text for one image.

    Args:
        allowed: the edit types the model may choose from.
        style: target style to use if the model picks ``style_change``.
        force_photoreal: the source is not photorealistic and must become a photo.
        non_photoreal: the source is known to be stylised (its caption must say so).
        caption_hint: an existing caption of the image, shown as context.
    """
    by_name = {c.name: c for c in TAXONOMY}
    lines = ["Propose exactly one edit of this image. Its type must be one of:"]
    for name in allowed:
        desc = by_name[name].description if name in by_name else name.replace("_", " ")
        lines.append(f"- {name}: {desc}")
    lines.append(
        "Make the edit central and distinct: it should involve the main subject or the whole "
        "background, and the difference should be obvious at first glance. Avoid small, "
        "peripheral or ambiguous changes."
    )
    if force_photoreal:
        lines.append(
            "This image is not a photograph. Use style_change to turn it into a "
            f"{PHOTOREALISTIC} photo of the same content, with the same layout."
        )
    elif style is not None and "style_change" in allowed:
        lines.append(f"If you choose style_change, the edited image is in this style: {style}.")
    if non_photoreal and not force_photoreal:
        lines.append("This image is not photorealistic.")
    if caption_hint:
        lines.append(f'An existing description of the image, possibly incomplete: "{caption_hint}"')
    lines += [
        "",
        "Fill in these fields:",
        "- edit_type: the chosen type, spelled exactly as listed above.",
        "- src_caption: one or two sentences describing the image as it is. If it is a "
        "painting, drawing, cartoon, render or any other non-photographic style, name the style.",
        '- instruction: one imperative sentence that performs the edit, e.g. "Make the bus green."',
        "- tgt_caption: a description of the edited image alone, as if it had always looked "
        "that way. Describe what is there; do not mention a change or earlier state (avoid "
        'words like "now", "changed to", "became") and do not describe what is missing '
        '(avoid "without ...", "no ..."). For a style change, name the new style.',
        "- reverse_instruction: one imperative sentence that, applied to the edited image, "
        'yields the image shown here. Name the concrete result, e.g. "Make the bus yellow." '
        'or "Put a red kite in the sky."; the editor will not see this image, so never use '
        'words like "restore", "revert", "undo", "original" or "back to".',
        "",
        "Reply with only this JSON object:",
        '{"edit_type": "...", "src_caption": "...", "instruction": "...", '
        '"tgt_caption": "...", "reverse_instruction": "..."}',
    ]
    return "\n".join(lines)


def parse_edit_reply(reply: str, allowed: Sequence[str]) -> tuple[dict[str, str] | None, str]:
    """The five spec fields from a model reply, or ``(None, reason)``.

    The JSON object may be bare, fenced or surrounded by prose. ``edit_type`` is matched to
    ``allowed`` ignoring case and separators; string fields are stripped. Every rule of
    ``row_problems`` is checked (``file_name`` is not part of the reply).
    """
    try:
        obj = extract_json_object(reply, required_keys=SPEC_FIELDS)
    except JSONExtractError as e:
        return None, f"unparseable reply: {e}"
    spec: dict[str, Any] = {k: obj.get(k) for k in SPEC_FIELDS}
    for k, v in spec.items():
        if isinstance(v, str):
            spec[k] = v.strip()
    if isinstance(spec["edit_type"], str):
        canon = {canonical_edit_type(a): a for a in allowed}
        spec["edit_type"] = canon.get(canonical_edit_type(spec["edit_type"]), spec["edit_type"])
    problems = row_problems({"file_name": "-", **spec}, allowed_edit_types=allowed)
    if problems:
        return None, "; ".join(problems)
    return spec, ""


# ----------------------------------------------------------------------------- image mode


@dataclass
class SourceInfo:
    """What is known about a source image before the VLM sees it."""

    caption: str | None = None
    photorealistic: bool | None = None  # None: unknown (treated as photorealistic)


def load_source_metadata(path: str | Path) -> dict[str, SourceInfo]:
    """``file_name -> SourceInfo`` from a JSONL file.

    Each line has ``file_name`` and optionally ``caption`` (or ``text``) and
    ``photorealistic`` (bool) or ``non_photorealistic`` (bool) or ``style`` (a string; any
    style other than photo/photograph/photorealistic marks the image non-photorealistic).
    """
    out: dict[str, SourceInfo] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from e
            if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
                raise DataError(f"{path}:{line_no}: needs a string 'file_name'")
            photoreal = rec.get("photorealistic")
            if photoreal is None and "non_photorealistic" in rec:
                photoreal = not rec["non_photorealistic"]
            if photoreal is None and isinstance(rec.get("style"), str):
                photoreal = rec["style"].strip().lower() in ("photo", "photograph", PHOTOREALISTIC)
            if photoreal is not None and not isinstance(photoreal, bool):
                raise DataError(f"{path}:{line_no}: photorealistic must be true/false")
            caption = rec.get("caption", rec.get("text"))
            out[rec["file_name"]] = SourceInfo(
                caption if isinstance(caption, str) else None, photoreal
            )
    return out


def list_images(images_dir: str | Path, exclude: Path | None = None) -> list[str]:
    """Image paths under ``images_dir`` (recursive, sorted, posix, relative to it)."""
    images_dir = Path(images_dir)
    out = []
    for p in sorted(images_dir.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if exclude is not None and exclude.resolve() in p.resolve().parents:
            continue
        out.append(p.relative_to(images_dir).as_posix())
    return out


@dataclass
class GenerateConfig:
    """Knobs of ``generate_edit_specs`` (the CLI flags of ``byg data generate``)."""

    types_per_image: int = 3
    balance: float = 1.0
    force_photoreal_prob: float = 0.3
    seed: int = 0
    max_image_side: int = 1024
    copy_mode: str = "copy"  # copy | symlink | hardlink: how images reach --out
    resume: bool = False
    limit: int | None = None  # stop after this many images of this invocation
    max_consecutive_failures: int = 20
    styles: tuple[str, ...] = STYLES

    def __post_init__(self) -> None:
        if self.copy_mode not in ("copy", "symlink", "hardlink"):
            raise ValueError(f"copy_mode must be copy, symlink or hardlink, got {self.copy_mode!r}")
        if not 0.0 <= self.force_photoreal_prob <= 1.0:
            raise ValueError(
                f"force_photoreal_prob must be in [0, 1], got {self.force_photoreal_prob}"
            )
        if self.max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be >= 1")


@dataclass
class GenerateStats:
    kept: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0  # already done in an earlier run (resume)
    reasons: Counter[str] = field(default_factory=Counter)  # rejection rule -> count

    def postfix(self) -> dict[str, int]:
        return {"kept": self.kept, "rejected": self.rejected, "failed": self.failed}


@dataclass
class _Job:
    file_name: str
    allowed: list[str]
    style: str | None
    force_photoreal: bool
    info: SourceInfo


@dataclass
class _Outcome:
    job: _Job
    status: str  # kept | rejected | failed
    reason: str = ""
    spec: dict[str, str] | None = None
    reply: str | None = None


_FAILURE_KINDS = r"HTTP \d+|timed out|connection failed|malformed response|cannot read image"


def _rule_name(reason: str) -> str:
    """A short key for counting outcomes by cause, e.g. ``"tgt_caption uses temporal language"``
    or ``"failed: HTTP 500"``."""
    if reason.startswith("failed") or re.search(
        r"attempt\(s\) failed|^HTTP \d+|^cannot read image", reason
    ):
        kind = re.findall(_FAILURE_KINDS, reason)
        return f"failed: {kind[-1] if kind else 'request error'}"
    first = reason.split("; ")[0]
    if "is not one of" in first:
        return "edit_type not among the allowed types"
    return re.split(r" \(|: ", first, maxsplit=1)[0].strip()


def _done_files(out_dir: Path) -> tuple[set[str], Counter[str]]:
    """Files already handled by earlier runs (kept or rejected) and the kept types' counts."""
    done: set[str] = set()
    usage: Counter[str] = Counter()
    meta = out_dir / METADATA_NAME
    if meta.exists():
        for line in meta.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("file_name"), str):
                done.add(rec["file_name"])
                usage[str(rec.get("edit_type"))] += 1
    logf = out_dir / LOG_NAME
    if logf.exists():
        for line in logf.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("status") == "rejected":
                done.add(str(rec.get("file_name")))
    return done, usage


def _place_image(src: Path, dst: Path, mode: str) -> None:
    if src.resolve() == dst.resolve():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "symlink":
        os.symlink(src.resolve(), dst)
    elif mode == "hardlink":
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def generate_edit_specs(
    images_dir: str | Path,
    out_dir: str | Path,
    client: ChatClient,
    config: GenerateConfig | None = None,
    *,
    source_metadata: dict[str, SourceInfo] | None = None,
    progress: bool = True,
) -> GenerateStats:
    """Ask the VLM for one edit spec per image and append the kept ones to ``out_dir``.

    Rows go to ``out_dir/metadata.jsonl`` as they arrive; every outcome (kept, rejected with
    its rule, failed with its error) goes to ``out_dir/generate_log.jsonl``. Images are copied
    (or linked) into ``out_dir`` unless it is ``images_dir``. Requests run ``concurrency`` at
    a time; the main thread alone samples subsets and writes files.

    Raises:
        DataError: ``out_dir`` already has rows and ``resume`` is off, or no images found.
        VLMError: ``max_consecutive_failures`` requests in a row failed (server down?).
    """
    cfg = config or GenerateConfig()
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise DataError(f"image folder {str(images_dir)!r} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    same_dir = images_dir.resolve() == out_dir.resolve()
    meta_path, log_path = out_dir / METADATA_NAME, out_dir / LOG_NAME
    if not cfg.resume and (meta_path.exists() or log_path.exists()):
        raise DataError(
            f"{out_dir} already has {METADATA_NAME} or {LOG_NAME}; pass --resume to continue "
            "that run, or choose another --out"
        )
    exclude = None if same_dir or images_dir.resolve() not in out_dir.resolve().parents else out_dir
    files = list_images(images_dir, exclude=exclude)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {images_dir}")
    source_metadata = source_metadata or {}
    done, usage = _done_files(out_dir) if cfg.resume else (set(), Counter())
    stats = GenerateStats(skipped=sum(f in done for f in files))
    todo = [f for f in files if f not in done]
    if cfg.limit is not None:
        todo = todo[: cfg.limit]

    rng = random.Random(cfg.seed)
    sampler = CategorySampler(TAXONOMY, k=cfg.types_per_image, balance=cfg.balance, rng=rng)
    sampler.usage.update({k: v for k, v in usage.items() if k in CATEGORY_NAMES})

    def make_job(name: str) -> _Job:
        info = source_metadata.get(name, SourceInfo())
        non_photo = info.photorealistic is False
        if non_photo and rng.random() < cfg.force_photoreal_prob:
            return _Job(name, ["style_change"], PHOTOREALISTIC, True, info)
        return _Job(name, sampler.sample(), rng.choice(cfg.styles), False, info)

    def run(job: _Job) -> _Outcome:
        try:
            url = image_to_data_url(images_dir / job.file_name, cfg.max_image_side)
        except OSError as e:
            return _Outcome(job, "failed", f"cannot read image: {e}")
        text = build_edit_prompt(
            job.allowed,
            job.style,
            force_photoreal=job.force_photoreal,
            non_photoreal=job.info.photorealistic is False,
            caption_hint=job.info.caption,
        )
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, user_message(text, url)]
        try:
            reply = client.chat(messages)
        except VLMError as e:
            return _Outcome(job, "failed", str(e))
        spec, reason = parse_edit_reply(reply, job.allowed)
        if spec is None:
            return _Outcome(job, "rejected", reason, reply=reply)
        return _Outcome(job, "kept", spec=spec, reply=reply)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="generate", unit="img")
    consecutive_failures, last_failure = 0, ""
    jobs: Iterator[str] = iter(todo)
    window = 2 * client.config.concurrency  # bounded number of requests in flight
    with ThreadPoolExecutor(max_workers=client.config.concurrency) as pool:
        pending: set[Future[_Outcome]] = set()

        def refill() -> None:
            while len(pending) < window:
                name = next(jobs, None)
                if name is None:
                    return
                pending.add(pool.submit(run, make_job(name)))

        refill()
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    pending.discard(fut)
                    out = fut.result()
                    consecutive_failures = 0 if out.status != "failed" else consecutive_failures + 1
                    last_failure = client._scrub(out.reason) if out.status == "failed" else ""
                    _handle(out, images_dir, out_dir, cfg, sampler, stats, client)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(stats.postfix())
                if consecutive_failures >= cfg.max_consecutive_failures:
                    raise VLMError(
                        f"{consecutive_failures} requests in a row failed; last: "
                        f"{last_failure}. Is the server at "
                        f"{client.url} up? Rerun with --resume to continue."
                    )
                refill()
        finally:
            for fut in pending:
                fut.cancel()
            if bar is not None:
                bar.close()
    return stats


def _handle(
    out: _Outcome,
    images_dir: Path,
    out_dir: Path,
    cfg: GenerateConfig,
    sampler: CategorySampler,
    stats: GenerateStats,
    client: ChatClient,
) -> None:
    job = out.job
    record: dict[str, Any] = {
        "file_name": job.file_name,
        "status": out.status,
        "allowed": job.allowed,
    }
    if out.status == "kept":
        assert out.spec is not None
        spec = out.spec
        style = job.style if spec["edit_type"] == "style_change" else None
        row = EditRow(file_name=job.file_name, style=style, **spec)
        _place_image(images_dir / job.file_name, out_dir / job.file_name, cfg.copy_mode)
        write_rows(out_dir, [row])
        sampler.record(row.edit_type)
        stats.kept += 1
        record["edit_type"] = row.edit_type
    else:
        reason = client._scrub(out.reason)
        record["reason"] = reason
        if out.reply is not None:
            record["reply"] = client._scrub(out.reply[:2000])
        stats.reasons[_rule_name(reason)] += 1
        if out.status == "rejected":
            stats.rejected += 1
            log.info("rejected %s: %s", job.file_name, reason)
        else:
            stats.failed += 1
            log.warning("failed %s: %s", job.file_name, reason)
    _append_log(out_dir / LOG_NAME, record)


# ----------------------------------------------------------------------------- video mode

#: how a style is phrased in the template, for the styles the paper used
STYLE_PHRASES = {
    "cartoon": "a cartoon-style animated video",
    "photorealistic": "a photo-realistic video filmed with a real camera",
    "3d_cgi": "a 3D computer-generated animation",
}
DEFAULT_TEMPLATE = "{caption} The video is {style_phrase}."
#: words that reveal a visual style; a sanitised caption must not contain them
STYLE_WORDS = (
    r"cartoon\w*",
    r"anim(e|ated|ation)",
    r"photo[- ]?realis\w*",
    r"realistic",
    r"3d",
    r"cgi",
    r"render(ed|ing)?",
    r"illustrat\w*",
    r"painting",
    r"watercolou?r",
    r"sketch\w*",
    r"pixel art",
    r"claymation",
)
SANITIZE_PROMPT = (
    "Below is a description of a video. Rewrite it so that it describes only the content: "
    "the subjects, their actions, the setting, the camera motion and the lighting. Delete "
    "every hint about the visual style or medium (for example cartoon, animated, anime, "
    "photorealistic, realistic, 3D, CGI, rendered, painting, illustration). Keep everything "
    "else, in the same words where possible.\n\n"
    'Reply with only this JSON object: {{"caption": "..."}}\n\n'
    "Description:\n{caption}"
)


def style_word(text: str) -> str | None:
    """The first style hint in ``text`` (``None`` if there is none)."""
    for w in STYLE_WORDS:
        m = re.search(rf"\b{w}\b", text, flags=re.IGNORECASE)
        if m:
            return m.group(0)
    return None


def wrap_caption(caption: str, style: str, template: str = DEFAULT_TEMPLATE) -> str:
    """Put a style-free caption into the template (``{caption}``, ``{style}``, ``{style_phrase}``)."""
    phrase = STYLE_PHRASES.get(style, f"a {style} video")
    return template.format(caption=caption.strip(), style=style, style_phrase=phrase)


def style_instruction(style: str) -> str:
    """The self-contained instruction that converts a clip to ``style``."""
    name = {"photorealistic": "photo-realistic", "3d_cgi": "3D CGI"}.get(style, style)
    return f"Turn the video into {name} style."


def load_captions(path: str | Path) -> list[str]:
    """Captions from a ``.txt`` (one per line) or ``.jsonl`` (``caption`` or ``text`` key)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"caption file {str(path)!r} does not exist")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix.lower() != ".jsonl":
        return [ln.strip() for ln in lines]
    out = []
    for i, ln in enumerate(lines, start=1):
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {i} is not valid JSON ({e.msg})") from e
        cap = rec.get("caption", rec.get("text")) if isinstance(rec, dict) else None
        if not isinstance(cap, str) or not cap.strip():
            raise DataError(f"{path}: line {i} has no 'caption' (or 'text') string")
        out.append(cap.strip())
    return out


@dataclass
class VideoCaptionConfig:
    """Knobs of ``generate_video_captions`` (``byg data video-captions``)."""

    styles: tuple[str, ...] = ("cartoon", "photorealistic")
    n: int | None = None  # how many captions to sample (all when None)
    template: str = DEFAULT_TEMPLATE
    seed: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        if len(self.styles) < 2:
            raise ValueError(f"need at least two styles to convert between, got {self.styles}")
        for key in ("{caption}",):
            if key not in self.template:
                raise ValueError(f"template must contain {key}, got {self.template!r}")


def generate_video_captions(
    captions: Sequence[str],
    out_file: str | Path,
    client: ChatClient,
    config: VideoCaptionConfig | None = None,
    *,
    progress: bool = True,
) -> GenerateStats:
    """Sanitise sampled captions with the model (text only) and write styled prompts.

    Each output line (JSONL) holds ``id`` (index into ``captions``), ``source_caption``,
    ``caption`` (style-free), ``style``, ``prompt`` (the wrapped caption to generate the
    clip with) and the style-conversion edit of that clip: ``tgt_style``, ``tgt_prompt``,
    ``instruction`` and ``reverse_instruction``. A reply that still contains a style word,
    or has no JSON ``caption``, is rejected.
    """
    cfg = config or VideoCaptionConfig()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    done: set[int] = set()
    if out_file.exists() and out_file.stat().st_size > 0:
        if not cfg.resume:
            raise DataError(
                f"{out_file} exists; pass --resume to continue, or choose another --out"
            )
        for line in out_file.read_text(encoding="utf-8").splitlines():
            try:
                done.add(int(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    rng = random.Random(cfg.seed)
    order = list(range(len(captions)))
    rng.shuffle(order)
    if cfg.n is not None:
        order = order[: cfg.n]
    # styles are drawn for the whole sample up front, so a resumed run draws the same ones
    plan = [(i, rng.choice(cfg.styles)) for i in order]
    plan = [(i, s, rng.choice([t for t in cfg.styles if t != s])) for i, s in plan]
    stats = GenerateStats(skipped=sum(i in done for i, _, _ in plan))
    plan = [p for p in plan if p[0] not in done]

    def run(item: tuple[int, str, str]) -> tuple[tuple[int, str, str], str | None, str]:
        i = item[0]
        try:
            reply = client.chat([user_message(SANITIZE_PROMPT.format(caption=captions[i]))])
        except VLMError as e:
            return item, None, f"failed: {e}"
        try:
            obj = extract_json_object(reply, required_keys=("caption",))
        except JSONExtractError as e:
            return item, None, f"unparseable reply: {e}"
        cap = obj.get("caption")
        if not isinstance(cap, str) or not cap.strip():
            return item, None, "missing field 'caption'"
        hint = style_word(cap)
        if hint:
            return item, None, f"caption still has a style hint ({hint!r})"
        return item, cap.strip(), ""

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plan), desc="video-captions", unit="cap")
    with (
        ThreadPoolExecutor(max_workers=client.config.concurrency) as pool,
        open(out_file, "a", encoding="utf-8") as f,
    ):
        for (i, style, tgt), cap, reason in _bounded_map(
            pool, run, plan, 2 * client.config.concurrency
        ):
            if cap is None:
                reason = client._scrub(reason)
                stats.reasons[_rule_name(reason)] += 1
                if reason.startswith("failed"):
                    stats.failed += 1
                else:
                    stats.rejected += 1
                log.info("caption %d not kept: %s", i, reason)
            else:
                rec = {
                    "id": i,
                    "source_caption": captions[i],
                    "caption": cap,
                    "style": style,
                    "prompt": wrap_caption(cap, style, cfg.template),
                    "tgt_style": tgt,
                    "tgt_prompt": wrap_caption(cap, tgt, cfg.template),
                    "instruction": style_instruction(tgt),
                    "reverse_instruction": style_instruction(style),
                }
                assert reverse_instruction_problem(rec["reverse_instruction"]) is None
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                stats.kept += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(stats.postfix())
    if bar is not None:
        bar.close()
    return stats


def _bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any], window: int
) -> Iterator[Any]:
    """``pool.map`` with at most ``window`` tasks in flight, yielding in completion order."""
    it = iter(items)
    pending: set[Future[Any]] = set()
    try:
        while True:
            while len(pending) < window:
                item = next(it, None)
                if item is None:
                    break
                pending.add(pool.submit(fn, item))
            if not pending:
                return
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()
    finally:
        for fut in pending:
            fut.cancel()


# ----------------------------------------------------------------------------- synth videos


def load_base_pipeline(path: str | Path, device: str = "cuda", dtype: str = "bfloat16") -> Any:
    """The base text-to-video diffusers pipeline from a local folder (never downloads).

    Raises:
        RuntimeError: the folder does not exist or is not a diffusers pipeline.
    """
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise RuntimeError(
            f"synth-videos needs the base text-to-video model on disk as a diffusers pipeline "
            f"folder (with model_index.json), e.g. a local copy of "
            f"Wan-AI/Wan2.1-T2V-1.3B-Diffusers; {str(path)!r} is not one. Nothing was generated."
        )
    import torch
    from diffusers import DiffusionPipeline

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype must name a torch dtype, got {dtype!r}")
    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype, local_files_only=True)
    return pipe.to(device)


def _write_video(frames: Any, path: Path, fps: int) -> None:
    import imageio.v2 as imageio
    import numpy as np

    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    imageio.mimwrite(tmp, list(arr), fps=fps, macro_block_size=1)
    os.replace(tmp, path)


@dataclass
class SynthConfig:
    """Sampling settings of ``synth_videos`` (defaults: Wan2.1 at 480x832, 81 frames)."""

    num_frames: int = 81
    height: int = 480
    width: int = 832
    steps: int = 50
    guidance: float = 5.0
    fps: int = 16
    seed: int = 0
    negative_prompt: str = ""
    limit: int | None = None


def synth_videos(
    captions_file: str | Path,
    out_dir: str | Path,
    pipe: Any,
    config: SynthConfig | None = None,
    *,
    progress: bool = True,
) -> int:
    """Generate one clip per caption row with the base pipeline; append tuple rows.

    ``captions_file`` is the output of ``generate_video_captions``. Clip ``id`` goes to
    ``out_dir/clips/{id:06d}.mp4`` and its row to ``out_dir/metadata.jsonl``: source caption
    = ``prompt``, target caption = ``tgt_prompt``, edit type ``style_change``, ``style`` = the
    target style. Clips whose row exists are skipped (resume). ``pipe`` is a diffusers
    text-to-video pipeline: ``pipe(prompt=..., num_frames=..., output_type="np").frames[0]``
    is ``[F, H, W, 3]`` in ``[0, 1]``.

    Returns:
        the number of clips written by this call.
    """
    import torch

    cfg = config or SynthConfig()
    out_dir = Path(out_dir)
    rows = [
        json.loads(ln) for ln in Path(captions_file).read_text("utf-8").splitlines() if ln.strip()
    ]
    need = ("id", "prompt", "tgt_prompt", "instruction", "reverse_instruction", "tgt_style")
    for n, rec in enumerate(rows, start=1):
        missing = [k for k in need if k not in rec]
        if missing:
            raise DataError(
                f"{captions_file}: line {n} lacks {missing} (run `byg data video-captions`)"
            )
    done, _ = _done_files(out_dir)
    todo = [r for r in rows if f"clips/{int(r['id']):06d}.mp4" not in done]
    if cfg.limit is not None:
        todo = todo[: cfg.limit]
    it: Iterable[dict[str, Any]] = todo
    if progress:
        from tqdm import tqdm

        it = tqdm(todo, desc="synth-videos", unit="clip")
    written = 0
    for rec in it:
        name = f"clips/{int(rec['id']):06d}.mp4"
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000_003 + int(rec["id"]))
        frames = pipe(
            prompt=rec["prompt"],
            negative_prompt=cfg.negative_prompt or None,
            height=cfg.height,
            width=cfg.width,
            num_frames=cfg.num_frames,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance,
            generator=gen,
            output_type="np",
        ).frames[0]
        _write_video(frames, out_dir / name, cfg.fps)
        row = EditRow(
            file_name=name,
            src_caption=rec["prompt"],
            tgt_caption=rec["tgt_prompt"],
            instruction=rec["instruction"],
            reverse_instruction=rec["reverse_instruction"],
            edit_type="style_change",
            style=rec["tgt_style"],
        )
        write_rows(out_dir, [row])
        written += 1
    return written


__all__ = [
    "CATEGORY_NAMES",
    "STYLES",
    "TAXONOMY",
    "CategorySampler",
    "EditCategory",
    "GenerateConfig",
    "GenerateStats",
    "SynthConfig",
    "VideoCaptionConfig",
    "build_edit_prompt",
    "generate_edit_specs",
    "generate_video_captions",
    "inclusion_probabilities",
    "load_base_pipeline",
    "parse_edit_reply",
    "synth_videos",
]
