"""VLM client and edit-spec generation against a real loopback chat-completions server."""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from vlm_server import FakeVLM, Reply  # noqa: E402

from byg.data.generate import (  # noqa: E402
    CATEGORY_NAMES,
    LOG_NAME,
    STYLES,
    TAXONOMY,
    CategorySampler,
    GenerateConfig,
    SourceInfo,
    VideoCaptionConfig,
    generate_edit_specs,
    generate_video_captions,
    inclusion_probabilities,
    load_base_pipeline,
    parse_edit_reply,
    style_word,
)
from byg.data.tuples import METADATA_NAME, read_metadata, validate_folder  # noqa: E402

KEY = "sk-test-Zq81secret"
KEY_ENV = "BYG_TEST_VLM_KEY"


def client(url: str, **kw):
    from byg.data.vlm import ChatClient, VLMConfig

    cfg = dict(
        endpoint=url,
        model="test-vlm",
        api_key_env=KEY_ENV,
        timeout=2.0,
        max_retries=2,
        backoff=0.01,
        backoff_max=0.05,
        concurrency=4,
    )
    cfg.update(kw)
    return ChatClient(VLMConfig(**cfg))


def spec(edit_type="color_change", **kw) -> dict:
    out = {
        "edit_type": edit_type,
        "src_caption": "A red mug on a wooden table.",
        "instruction": "Make the mug blue.",
        "tgt_caption": "A blue mug on a wooden table.",
        "reverse_instruction": "Make the mug red.",
    }
    out.update(kw)
    return out


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    srv = FakeVLM().start()
    yield srv
    srv.stop()


def make_images(folder: Path, names: list[str]) -> dict[str, str]:
    """Solid-colour images, one colour per name; returns name -> data URL (the server key)."""
    from byg.data.vlm import image_to_data_url

    folder.mkdir(parents=True, exist_ok=True)
    keys = {}
    for i, name in enumerate(names):
        path = folder / f"{name}.png"
        Image.new("RGB", (24, 20), (20 * i, 255 - 20 * i, (70 * i) % 256)).save(path)
        keys[name] = image_to_data_url(path)
    return keys


# ----------------------------------------------------------------------------- parsing


def test_json_extraction_handles_fences_prose_and_reasoning():
    from byg.data.vlm import JSONExtractError, extract_json_object

    obj = {"edit_type": "add", "note": "braces { } inside a string"}
    text = json.dumps(obj)
    assert extract_json_object(text) == obj
    assert extract_json_object(f"```json\n{text}\n```") == obj
    assert extract_json_object(f"Sure, here it is:\n{text}\nAnything else?") == obj
    assert extract_json_object(f"<think>maybe {{bad}}</think>\n{text}") == obj
    assert extract_json_object(f"reasoning...</think>{text}") == obj
    # an example object in the prose loses to the one that has the required keys
    got = extract_json_object(f'e.g. {{"x": 1}} then {text}', required_keys=("edit_type",))
    assert got == obj
    for broken in ['{"edit_type": "add", ', "no json here", "[1, 2]"]:
        with pytest.raises(JSONExtractError):
            extract_json_object(broken)


def test_parse_edit_reply_applies_every_rule():
    allowed = ["remove", "texture_material_change"]
    ok, reason = parse_edit_reply(json.dumps(spec("Texture/Material change")), allowed)
    assert reason == "" and ok["edit_type"] == "texture_material_change"
    cases = {
        "reverse_instruction refers to an original state": spec(
            "remove", reverse_instruction="Revert the mug."
        ),
        "tgt_caption uses temporal language": spec("remove", tgt_caption="The mug became blue."),
        "tgt_caption uses negative phrasing": spec("remove", tgt_caption="A table without a mug."),
        "is not one of": spec("color_change"),
        "missing field 'instruction'": {
            k: v for k, v in spec("remove").items() if k != "instruction"
        },
    }
    for expected, obj in cases.items():
        got, reason = parse_edit_reply(json.dumps(obj), allowed)
        assert got is None and expected in reason, (expected, reason)


# ----------------------------------------------------------------------------- client


def test_client_sends_bearer_key_retries_and_fails_cleanly(server, caplog):
    from byg.data.vlm import VLMError, user_message

    c = client(server.url, timeout=1.0, max_retries=2)
    server.add("ok", Reply(content="hello"))
    server.add("500", Reply(status=500), Reply(content="after 500"))
    server.add("429", Reply(status=429, headers={"Retry-After": "0"}), Reply(content="after 429"))
    server.add("slow", Reply(content="late", delay=2.5), Reply(content="in time"))
    server.add("down", Reply(status=503))
    server.add("bad", Reply(status=400, body=f'{{"error": "bad key {KEY}"}}'))
    with caplog.at_level(logging.DEBUG):
        assert c.chat([user_message("ok")]) == "hello"
        assert c.chat([user_message("500")]) == "after 500"
        assert c.chat([user_message("429")]) == "after 429"
        assert c.chat([user_message("slow")]) == "in time"
        with pytest.raises(VLMError, match="3 attempt"):
            c.chat([user_message("down")])
        with pytest.raises(VLMError) as err:
            c.chat([user_message("bad")])
    assert "HTTP 400" in str(err.value) and KEY not in str(err.value) and "***" in str(err.value)
    keys = server.keys_requested()
    counts = {k: keys.count(k) for k in ("ok", "500", "429", "slow", "down", "bad")}
    assert counts == {"ok": 1, "500": 2, "429": 2, "slow": 2, "down": 3, "bad": 1}
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert server.requests[0]["body"]["model"] == "test-vlm"
    assert KEY not in caplog.text


def test_client_without_key_sends_no_authorization(server, monkeypatch):
    from byg.data.vlm import user_message

    monkeypatch.delenv(KEY_ENV)
    server.add("hi", Reply(content="yo"))
    assert client(server.url).chat([user_message("hi")]) == "yo"
    assert "Authorization" not in server.requests[0]["headers"]


# ----------------------------------------------------------------------------- generation


def test_generate_keeps_rejects_and_fails_by_rule(server, tmp_path, capsys, caplog):
    names = list("abcdefghijkl")
    keys = make_images(tmp_path / "images", names)
    good = json.dumps(spec())
    script = {
        "a": [Reply(good)],  # bare JSON
        "b": [
            Reply("```json\n" + json.dumps(spec("Remove", tgt_caption="A wooden table.")) + "\n```")
        ],
        "c": [Reply("Here is my proposal:\n" + good + "\nI hope this helps.")],
        "d": [Reply('{"edit_type": "add", "src_caption": ')],  # broken JSON
        "e": [Reply(json.dumps(spec(reverse_instruction="Restore the original colour.")))],
        "f": [Reply(json.dumps(spec(tgt_caption="The mug is now blue.")))],
        "g": [Reply(json.dumps(spec("teleport")))],
        "h": [Reply(good, delay=2.5)],  # always slower than the timeout
        "i": [Reply(status=500), Reply(good)],  # retried
        "j": [Reply(status=429, headers={"Retry-After": "0"}), Reply(good)],
        "k": [Reply(json.dumps({k: v for k, v in spec().items() if k != "reverse_instruction"}))],
        "l": [Reply(status=401, body=f"invalid key {KEY}")],  # echoes the key back
    }
    for name, replies in script.items():
        server.add(keys[name], *replies)
    out = tmp_path / "data"
    cfg = GenerateConfig(types_per_image=len(CATEGORY_NAMES), max_consecutive_failures=5)
    with caplog.at_level(logging.INFO):
        stats = generate_edit_specs(
            tmp_path / "images", out, client(server.url, timeout=1.0, max_retries=1), cfg
        )
    assert (stats.kept, stats.rejected, stats.failed) == (5, 5, 2)
    assert stats.reasons == {
        "unparseable reply": 1,
        "reverse_instruction refers to an original state": 1,
        "tgt_caption uses temporal language": 1,
        "edit_type not among the allowed types": 1,
        "missing field 'reverse_instruction'": 1,
        "failed: timed out": 1,
        "failed: HTTP 401": 1,
    }
    rows, bad = read_metadata(out)
    assert bad == [] and sorted(r.file_name for r in rows) == [
        "a.png",
        "b.png",
        "c.png",
        "i.png",
        "j.png",
    ]
    assert {r.file_name: r.edit_type for r in rows}["b.png"] == "remove"
    assert validate_folder(out).ok  # images were copied beside the metadata
    log = {
        json.loads(x)["file_name"]: json.loads(x) for x in (out / LOG_NAME).read_text().splitlines()
    }
    assert log["d.png"]["status"] == "rejected" and "unparseable" in log["d.png"]["reason"]
    assert "'restore'" in log["e.png"]["reason"] and "'now'" in log["f.png"]["reason"]
    assert "'teleport' is not one of" in log["g.png"]["reason"]
    assert "missing field 'reverse_instruction'" in log["k.png"]["reason"]
    assert log["h.png"]["status"] == "failed" and "timed out" in log["h.png"]["reason"]
    assert log["l.png"]["status"] == "failed" and "HTTP 401" in log["l.png"]["reason"]
    requested = server.keys_requested()
    assert [requested.count(keys[n]) for n in "hijl"] == [2, 2, 2, 1]
    # the prompt offers the drawn types and asks for the five fields
    prompt = server.requests[0]["body"]["messages"][1]["content"][1]["text"]
    assert all(f"- {n}:" in prompt for n in CATEGORY_NAMES) and "reverse_instruction" in prompt
    # the key went out as a bearer header and nowhere else
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in server.requests)
    captured = capsys.readouterr()
    for text in [
        (out / METADATA_NAME).read_text(),
        (out / LOG_NAME).read_text(),
        captured.out,
        captured.err,
        caplog.text,
    ]:
        assert KEY not in text
    assert "***" in log["l.png"]["reason"]


def test_generate_resumes_where_it_stopped(server, tmp_path):
    names = [f"im{i}" for i in range(6)]
    keys = make_images(tmp_path, names)
    for n in names:
        server.add(keys[n], Reply(json.dumps(spec())))
    server.add(keys["im1"], Reply(status=503), Reply(json.dumps(spec())))  # fails once
    server.add(keys["im2"], Reply(json.dumps(spec(reverse_instruction="Undo it."))))
    c = client(server.url, max_retries=0, concurrency=2)
    # out == the image folder: metadata.jsonl lands beside the images, nothing copied
    every = len(CATEGORY_NAMES)  # all types allowed: the scripted type is always valid
    first = generate_edit_specs(
        tmp_path, tmp_path, c, GenerateConfig(types_per_image=every, limit=4), progress=False
    )
    assert (first.kept, first.rejected, first.failed) == (2, 1, 1)
    with pytest.raises(Exception, match="--resume"):
        generate_edit_specs(tmp_path, tmp_path, c, GenerateConfig(), progress=False)
    cfg = GenerateConfig(types_per_image=every, resume=True)
    second = generate_edit_specs(tmp_path, tmp_path, c, cfg, progress=False)
    # kept and rejected images are done; the failed one is tried again
    assert (second.skipped, second.kept, second.rejected, second.failed) == (3, 3, 0, 0)
    requested = server.keys_requested()
    assert [requested.count(keys[n]) for n in names] == [1, 2, 1, 1, 1, 1]
    rows, _ = read_metadata(tmp_path)
    assert sorted(r.file_name for r in rows) == [f"im{i}.png" for i in (0, 1, 3, 4, 5)]


def test_generate_stops_when_the_server_is_down(tmp_path, monkeypatch):
    from byg.data.vlm import VLMError

    make_images(tmp_path / "im", [f"x{i}" for i in range(30)])
    srv = FakeVLM(default=Reply(status=500)).start()
    try:
        c = client(srv.url, max_retries=0, concurrency=2)
        with pytest.raises(VLMError, match=r"\d requests in a row failed; last: .*HTTP 500"):
            generate_edit_specs(
                tmp_path / "im", tmp_path / "out", c, GenerateConfig(max_consecutive_failures=3)
            )
        assert len(srv.requests) <= 3 + 2 * 2  # bounded: at most a window in flight
    finally:
        srv.stop()


def test_non_photorealistic_sources_are_forced_to_photorealistic(server, tmp_path):
    keys = make_images(tmp_path / "im", ["paint", "photo"])
    server.add(
        keys["paint"], Reply(json.dumps(spec("style_change", tgt_caption="A photo of a mug.")))
    )
    server.add(keys["photo"], Reply(json.dumps(spec("style_change", tgt_caption="An anime mug."))))
    meta = {
        "paint.png": SourceInfo(caption="an oil painting of a mug", photorealistic=False),
        "photo.png": SourceInfo(photorealistic=True),
    }
    cfg = GenerateConfig(force_photoreal_prob=1.0, types_per_image=10)
    stats = generate_edit_specs(
        tmp_path / "im",
        tmp_path / "out",
        client(server.url),
        cfg,
        source_metadata=meta,
        progress=False,
    )
    assert stats.kept == 2
    log = {
        json.loads(x)["file_name"]: json.loads(x)
        for x in (tmp_path / "out" / LOG_NAME).read_text().splitlines()
    }
    assert (
        log["paint.png"]["allowed"] == ["style_change"] and len(log["photo.png"]["allowed"]) == 10
    )
    by_key = {r["key"]: r["body"]["messages"][1]["content"][1]["text"] for r in server.requests}
    assert "photorealistic photo of the same content" in by_key[keys["paint"]]
    assert "an oil painting of a mug" in by_key[keys["paint"]]
    assert "photorealistic photo of the same content" not in by_key[keys["photo"]]
    styles = {r.file_name: r.style for r in read_metadata(tmp_path / "out")[0]}
    assert styles["paint.png"] == "photorealistic"
    assert styles["photo.png"] in STYLES


def test_generate_cli_end_to_end(server, tmp_path, capsys):
    from byg.data.commands import register

    keys = make_images(tmp_path / "im", ["one", "two"])
    for k in keys.values():
        server.add(k, Reply(json.dumps(spec())))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    argv = ["data", "generate", str(tmp_path / "im"), "--out", str(tmp_path / "ds")]
    argv += ["--endpoint", server.url, "--model", "m", "--api-key-env", KEY_ENV, "--backoff", "0"]
    argv += ["--types-per-image", "10"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr()
    assert "kept 2, rejected 0, failed 0" in out.out and "2 good row(s), 0 bad" in out.out
    assert KEY not in out.out + out.err


# ----------------------------------------------------------------------------- balancing


def test_subset_inclusion_matches_exact_probabilities():
    sampler = CategorySampler(TAXONOMY, k=3, balance=1.0, rng=random.Random(0))
    exact = inclusion_probabilities(sampler.weights(), 3)
    assert math.isclose(sum(exact.values()), 3.0)
    n = 6000
    counts = dict.fromkeys(CATEGORY_NAMES, 0)
    for _ in range(n):
        sub = sampler.sample()
        assert len(set(sub)) == 3
        for name in sub:
            counts[name] += 1
    for name, p in exact.items():
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(counts[name] / n - p) < 4.5 * sigma, (name, counts[name] / n, p)
    # the fixed priority favours remove and replace
    assert exact["remove"] > exact["color_change"] + 0.05
    assert counts["remove"] > counts["color_change"] and counts["replace"] > counts["add"]


def test_usage_term_lowers_the_weight_of_types_used_more():
    sampler = CategorySampler(TAXONOMY, k=1, balance=1.0, rng=random.Random(1))
    for _ in range(40):
        sampler.record("remove")
    for _ in range(4):
        sampler.record("add")
    w = sampler.weights()
    total = sum(w.values())
    assert w["remove"] < w["add"] < w["color_change"]
    n = 8000
    counts = dict.fromkeys(CATEGORY_NAMES, 0)
    for _ in range(n):
        counts[sampler.sample()[0]] += 1
    for name, weight in w.items():
        p = weight / total
        assert abs(counts[name] / n - p) < 4.5 * math.sqrt(p * (1 - p) / n), name


@pytest.mark.parametrize("seed", [0, 1])
def test_online_balancing_counteracts_a_biased_model(seed):
    """A model that always picks color_change when offered: balancing limits the skew."""
    priority = {c.name: c.priority for c in TAXONOMY}
    total = sum(priority.values())

    def run(balance: float) -> dict[str, float]:
        sampler = CategorySampler(TAXONOMY, k=3, balance=balance, rng=random.Random(seed))
        chooser = random.Random(100 + seed)
        for _ in range(3000):
            sub = sampler.sample()
            sampler.record("color_change" if "color_change" in sub else chooser.choice(sub))
        return {n: sampler.usage[n] / 3000 / (priority[n] / total) for n in priority}

    plain, balanced = run(0.0), run(1.0)
    assert plain["color_change"] > 2.7  # ~ its inclusion probability, 3x its fair share
    assert balanced["color_change"] < 2.1

    def spread(r):
        return max(r.values()) / min(r.values())

    assert spread(balanced) < 0.6 * spread(plain)


# ----------------------------------------------------------------------------- video captions


def test_video_captions_strip_styles_wrap_and_resume(server, tmp_path):
    captions = [
        "A cartoon fox runs through a snowy forest.",
        "A man rides a bicycle along a beach at sunset.",
        "An animated robot waves at the camera.",
    ]
    from byg.data.generate import SANITIZE_PROMPT

    def key(c):
        return SANITIZE_PROMPT.format(caption=c)

    server.add(
        key(captions[0]), Reply('```json\n{"caption": "A fox runs through a snowy forest."}\n```')
    )
    server.add(
        key(captions[1]), Reply('{"caption": "A man rides a bicycle along a beach at sunset."}')
    )
    server.add(key(captions[2]), Reply('{"caption": "An animated robot waves at the camera."}'))
    out = tmp_path / "caps.jsonl"
    cfg = VideoCaptionConfig(seed=0)
    stats = generate_video_captions(captions, out, client(server.url), cfg, progress=False)
    assert (stats.kept, stats.rejected, stats.failed) == (2, 1, 0)
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {0, 1}
    for r in rows.values():
        assert style_word(r["caption"]) is None
        assert r["style"] != r["tgt_style"] and {r["style"], r["tgt_style"]} == {
            "cartoon",
            "photorealistic",
        }
        assert r["prompt"].startswith(r["caption"]) and r["prompt"] != r["tgt_prompt"]
        assert r["reverse_instruction"].startswith("Turn the video into")
    # text-only requests: a plain string content, no image
    assert all(isinstance(r["body"]["messages"][0]["content"], str) for r in server.requests)
    with pytest.raises(Exception, match="--resume"):
        generate_video_captions(captions, out, client(server.url), cfg, progress=False)
    n_before = len(server.requests)
    again = generate_video_captions(
        captions, out, client(server.url), VideoCaptionConfig(seed=0, resume=True), progress=False
    )
    assert again.skipped == 2 and again.rejected == 1 and len(server.requests) == n_before + 1


def test_synth_videos_errors_clearly_without_the_base_model(tmp_path):
    with pytest.raises(RuntimeError, match="needs the base text-to-video model on disk"):
        load_base_pipeline(tmp_path / "no-weights", device="cpu")


def test_synth_videos_with_a_tiny_real_wan_pipeline(server, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    from byg.backbones.wan import write_tiny_pretrained
    from byg.data.generate import SynthConfig, synth_videos
    from byg.data.tuples import EditFolderDataset

    torch.manual_seed(0)
    caps = tmp_path / "caps.jsonl"
    recs = []
    for i, (s, t) in enumerate([("cartoon", "photorealistic"), ("photorealistic", "cartoon")]):
        recs.append(
            {
                "id": i,
                "caption": "a dog runs",
                "style": s,
                "prompt": f"a dog runs. The video is {s}.",
                "tgt_style": t,
                "tgt_prompt": f"a dog runs. The video is {t}.",
                "instruction": f"Turn the video into {t} style.",
                "reverse_instruction": f"Turn the video into {s} style.",
            }
        )
    caps.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    pipe = load_base_pipeline(
        write_tiny_pretrained(tmp_path / "wan", layout="single"), "cpu", "float32"
    )
    cfg = SynthConfig(num_frames=5, height=16, width=16, steps=2, guidance=1.0, fps=4, limit=1)
    assert synth_videos(caps, tmp_path / "ds", pipe, cfg, progress=False) == 1
    cfg.limit = None
    assert synth_videos(caps, tmp_path / "ds", pipe, cfg, progress=False) == 1  # resumes
    report = validate_folder(tmp_path / "ds")
    assert report.ok and report.counts == {"style_change": 2}
    item = EditFolderDataset(tmp_path / "ds", resolution=16, num_frames=5)[0]
    assert item["x_src"].shape == (3, 5, 16, 16)
    assert item["c_rev"] == "Turn the video into cartoon style."
