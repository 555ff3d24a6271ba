"""A long-tail style benchmark over your own images (the paper's §5.1.2, rebuilt locally).

For a list of styles the paper never trains on (GTA V, Minecraft, American comic,
low-poly 3D, voxel, Lego), every edit is asked in both directions:

* photo → style: a photorealistic source and "turn it into <style>";
* style → photo: a stylised source and "turn it into a photorealistic photo".

The photos are yours (the paper used ImgEdit's); the stylised sources are yours too (the
paper generated them with a text-to-image model), one folder per style. The builder copies
the images into the benchmark folder and writes ``benchmark.jsonl`` in GEdit-Bench's row
layout (task types ``photo_to_style`` and ``style_to_photo``, plus ``style`` and
``direction`` fields), so ``byg eval run``, ``viescore`` and ``report`` work on it as on
GEdit-Bench. With ``captions`` (image name -> caption) the rows also carry source and target
captions, which CLIP-dir and the FlowEdit/SDEdit baselines need.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byg.eval.video_metrics import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Style:
    """A target style: ``slug`` names folders and keys; ``phrase`` goes into instructions."""

    slug: str
    phrase: str


#: the paper's six long-tail targets
DEFAULT_STYLES = (
    Style("gta_v", "GTA V style"),
    Style("minecraft", "Minecraft style"),
    Style("american_comic", "American comic style"),
    Style("low_poly", "low-poly 3D style"),
    Style("voxel", "voxel style"),
    Style("lego", "Lego style"),
)
PHOTO_TO_STYLE = "Turn this photo into {style}."
STYLE_TO_PHOTO = "Turn this {style} image into a photorealistic photo."
PHOTO_PHRASE = "photorealistic photo"


def parse_style(spec: str) -> Style:
    """``"slug=phrase"`` or a phrase (``"watercolor painting"`` -> slug ``watercolor_painting``)."""
    if "=" in spec:
        slug, phrase = (s.strip() for s in spec.split("=", 1))
    else:
        phrase = spec.strip()
        slug = re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")
    if not slug or not re.fullmatch(r"[a-z0-9_]+", slug) or not phrase:
        raise ValueError(f"bad style {spec!r}: use 'slug=phrase' with slug in [a-z0-9_]")
    return Style(slug, phrase)


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {str(folder)!r} holds no images {IMAGE_SUFFIXES}")
    return files


def build_longtail(
    out: str | Path,
    *,
    photos: str | Path | None = None,
    stylized: str | Path | None = None,
    styles: Sequence[Style] = DEFAULT_STYLES,
    styles_per_photo: int | None = None,
    captions: dict[str, str] | None = None,
    photo_to_style: str = PHOTO_TO_STYLE,
    style_to_photo: str = STYLE_TO_PHOTO,
    seed: int = 0,
) -> Path:
    """Write ``<out>/benchmark.jsonl`` and ``<out>/images/``; return the JSONL path.

    Args:
        out: benchmark folder (created; an existing ``benchmark.jsonl`` is an error).
        photos: folder of photorealistic sources (photo → style rows).
        stylized: folder with one sub-folder per style slug of stylised sources
            (style → photo rows); sub-folders must name styles in ``styles``.
        styles: target styles.
        styles_per_photo: styles drawn (seeded) per photo; None: every style.
        captions: image file name -> caption of its content (no style words); adds
            ``source_caption`` / ``target_caption`` to the rows.
        photo_to_style, style_to_photo: instruction templates with ``{style}``.
        seed: for ``styles_per_photo``.

    Raises:
        ValueError: nothing to build, an unknown style folder, bad templates.
    """
    if photos is None and stylized is None:
        raise ValueError("give photos (photo → style) and/or stylized (style → photo)")
    for name, tpl in (("photo_to_style", photo_to_style), ("style_to_photo", style_to_photo)):
        if "{style}" not in tpl:
            raise ValueError(f"the {name} template must contain {{style}}, got {tpl!r}")
    slugs = [s.slug for s in styles]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"duplicate style slugs in {slugs}")
    if styles_per_photo is not None and not 1 <= styles_per_photo <= len(styles):
        raise ValueError(f"styles_per_photo must be in [1, {len(styles)}], got {styles_per_photo}")
    out = Path(out)
    bench = out / "benchmark.jsonl"
    if bench.exists():
        raise FileExistsError(f"{bench} exists; choose another --out")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []

    def copy(src: Path, sub: str) -> str:
        dst = out / "images" / sub / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        return str(dst.relative_to(out))

    def caption(src: Path) -> str | None:
        if captions is None:
            return None
        if src.name not in captions:
            raise ValueError(f"no caption for {src.name!r} in the captions file")
        return captions[src.name]

    if photos is not None:
        for img in _images(Path(photos)):
            rel = copy(img, "photo")
            chosen = (
                styles if styles_per_photo is None else rng.sample(list(styles), styles_per_photo)
            )
            cap = caption(img)
            for st in chosen:
                row = {
                    "task_type": "photo_to_style",
                    "key": f"{img.stem}__to_{st.slug}",
                    "instruction": photo_to_style.format(style=st.phrase),
                    "instruction_language": "en",
                    "input_image": rel,
                    "Intersection_exist": True,
                    "style": st.slug,
                    "direction": "photo_to_style",
                }
                if cap is not None:
                    row["source_caption"] = f"{cap}, {PHOTO_PHRASE}"
                    row["target_caption"] = f"{cap}, {st.phrase}"
                rows.append(row)
    if stylized is not None:
        root = Path(stylized)
        if not root.is_dir():
            raise FileNotFoundError(f"stylized folder {str(root)!r} does not exist")
        by_slug = {s.slug: s for s in styles}
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        unknown = [p.name for p in folders if p.name not in by_slug]
        if unknown:
            raise ValueError(
                f"{root}: sub-folders {unknown} name no style; known slugs: {sorted(by_slug)}"
            )
        if not folders:
            raise ValueError(f"{root}: expected one sub-folder per style slug {sorted(by_slug)}")
        for folder in folders:
            st = by_slug[folder.name]
            for img in _images(folder):
                cap = caption(img)
                row = {
                    "task_type": "style_to_photo",
                    "key": f"{st.slug}__{img.stem}__to_photo",
                    "instruction": style_to_photo.format(style=st.phrase),
                    "instruction_language": "en",
                    "input_image": copy(img, f"style/{st.slug}"),
                    "Intersection_exist": True,
                    "style": st.slug,
                    "direction": "style_to_photo",
                }
                if cap is not None:
                    row["source_caption"] = f"{cap}, {st.phrase}"
                    row["target_caption"] = f"{cap}, {PHOTO_PHRASE}"
                rows.append(row)
    dup = sorted(k for k, n in Counter(r["key"] for r in rows).items() if n > 1)
    if dup:
        raise ValueError(f"image names collide into duplicate keys {dup[:5]}; rename the files")
    out.mkdir(parents=True, exist_ok=True)
    bench.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return bench


__all__ = ["Style", "DEFAULT_STYLES", "parse_style", "build_longtail"]
