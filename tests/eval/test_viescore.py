"""VIEScore: reply parsing, the SC/PQ/Overall arithmetic, task means, retries and resume.

The judge is a real HTTP server on 127.0.0.1 (random port) that speaks the OpenAI
chat-completions protocol and returns prepared answers. It tells samples apart by the colour
of the last image it is sent (each edited image is a solid, distinct colour).
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from byg.cli import main as cli_main
from byg.eval.judge import OpenAIJudge, VLMError
from byg.eval.viescore import (
    EvalSample,
    ScoreParseError,
    VIEPrompts,
    aggregate,
    parse_scores,
    read_results,
    run_viescore,
    score_triple,
)

GOOD = '{"score": [%d, %d], "reasoning": "ok"}'
REFUSAL = "I'm sorry, but I can't help with evaluating these images."


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"score": [7, 8], "reasoning": "fine"}', [7.0, 8.0]),
        ('```json\n{"score": [3, 9], "reasoning": "x"}\n```', [3.0, 9.0]),
        ('Here is my verdict:\n{"score": [6.5, 4], "reasoning": "a {b}"}\nThanks!', [6.5, 4.0]),
        ("{'score': [5, 6], 'reasoning': 'single quotes'}", [5.0, 6.0]),
        ('{"score": "[7, 2]", "reasoning": "list as a string"}', [7.0, 2.0]),
        ('{"score": ["10", "0"], "reasoning": "numbers as strings"}', [10.0, 0.0]),
        ('{"score": "4, 5"}', [4.0, 5.0]),
        ('<think>{"score": [1, 1]}</think>{"score": [9, 9], "reasoning": ""}', [9.0, 9.0]),
    ],
)
def test_parse_scores_accepts_common_reply_shapes(reply, expected):
    assert parse_scores(reply) == expected


@pytest.mark.parametrize(
    "reply, match",
    [
        (REFUSAL, "no JSON object"),
        ("", "empty"),
        (None, "empty"),
        ('{"reasoning": "forgot the score"}', "no 'score'"),
        ('{"score": [7]}', "expected 2 scores"),
        ('{"score": [7, 8, 9]}', "expected 2 scores"),
        ('{"score": [11, 8]}', "outside"),
        ('{"score": [-1, 8]}', "outside"),
        ('{"score": [true, 8]}', "not a number"),
        ('{"score": ["high", 8]}', "not a number"),
        ('{"score": {"a": 1}}', "not a list"),
    ],
)
def test_parse_scores_rejects_bad_replies(reply, match):
    with pytest.raises(ScoreParseError, match=match):
        parse_scores(reply)


def test_prompts_need_the_instruction_placeholder():
    with pytest.raises(ValueError, match="instruction"):
        VIEPrompts(sc="no placeholder here")
    p = VIEPrompts()
    assert "make it blue" in p.sc_prompt("make it blue")
    assert "{instruction}" not in p.sc_prompt("x") and "score" in p.pq_prompt()


# ----------------------------------------------------------------------------- the server


class FakeJudge:
    """A loopback OpenAI-compatible server. ``answers[(kind, rgb)]`` is a list of replies
    (``kind`` = "sc" for two images, "pq" for one; ``rgb`` the colour of the last image);
    replies are consumed in order and the last one repeats. The first ``fail_first``
    requests get HTTP 500."""

    def __init__(self, answers: dict, fail_first: int = 0) -> None:
        self.answers = {k: list(v) for k, v in answers.items()}
        self.fail_first = fail_first
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = judge.answer(self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        parts = body["messages"][0]["content"]
        images = []
        for p in parts:
            if p["type"] == "image_url":
                raw = base64.b64decode(p["image_url"]["url"].split(",", 1)[1])
                images.append(Image.open(io.BytesIO(raw)).convert("RGB"))
        text = next(p["text"] for p in parts if p["type"] == "text")
        kind = "sc" if len(images) == 2 else "pq"
        rgb = images[-1].getpixel((0, 0))
        with self.lock:
            self.requests.append(
                {
                    "path": path,
                    "kind": kind,
                    "rgb": rgb,
                    "sizes": [im.size for im in images],
                    "text": text,
                    "model": body["model"],
                    "temperature": body["temperature"],
                }
            )
            if self.fail_first > 0:
                self.fail_first -= 1
                return 500, {"error": "overloaded"}
            queue = self.answers.get((kind, rgb))
            if queue is None:
                return 400, {"error": f"no prepared answer for {(kind, rgb)}"}
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
        return 200, {"choices": [{"message": {"role": "assistant", "content": reply}}]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_judge():
    servers = []

    def make(answers, fail_first=0):
        s = FakeJudge(answers, fail_first)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def judge_for(server: FakeJudge, retries: int = 3) -> OpenAIJudge:
    return OpenAIJudge(
        server.url,
        "fake-vl",
        timeout=5,
        max_retries=retries,
        backoff=0.01,
        api_key_env="BYG_TEST_NO_SUCH_KEY",
    )


# colours of the edited images of samples A-D
A, B, C, D = (200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)
ANSWERS = {
    ("sc", A): [GOOD % (8, 6)],  # SC = 6
    ("pq", A): [GOOD % (9, 4)],  # PQ = 4
    ("sc", B): ['```json\n{"score": [10, 10], "reasoning": "fenced"}\n```'],  # SC = 10
    ("pq", B): ["{'score': [9, 9], 'reasoning': 'single quotes'}"],  # PQ = 9
    ("sc", C): ["{score: 5 7", '{"score": "[5, 7]", "reasoning": "retry"}'],  # bad, then 5
    ("pq", C): ['Sure. {"score": [3, 8], "reasoning": "prose"} Done.'],  # PQ = 3
    ("sc", D): [REFUSAL],  # never parses
    ("pq", D): [GOOD % (7, 7)],
}


def make_samples(tmp_path) -> list[EvalSample]:
    """A, B in task "t1"; C, D in "t2". Sources 12x8 grey; edits 6x4 solid colours."""
    samples = []
    for name, task, rgb in (("a", "t1", A), ("b", "t1", B), ("c", "t2", C), ("d", "t2", D)):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (6, 4), rgb).save(path)
        samples.append(
            EvalSample(
                id=f"{task}/en/{name}",
                task_type=task,
                instruction=f"edit {name}",
                edited_path=path,
                load_source=lambda: Image.new("RGB", (12, 8), (128, 128, 128)),
                meta={"key": name},
            )
        )
    return samples


# ----------------------------------------------------------------------------- scoring


def test_scores_arithmetic_parsing_and_task_means(tmp_path, fake_judge):
    server = fake_judge(ANSWERS)
    out = tmp_path / "scores.jsonl"
    rows = run_viescore(
        make_samples(tmp_path),
        judge_for(server),
        out,
        judge_name="fake-vl",
        workers=2,
        parse_retries=2,
        progress=False,
    )
    by = {r["key"]: r for r in rows}
    assert by["a"]["sc_scores"] == [8, 6] and by["a"]["pq_scores"] == [9, 4]
    assert (by["a"]["sc"], by["a"]["pq"]) == (6, 4)
    assert by["a"]["overall"] == pytest.approx(math.sqrt(24))
    assert (by["b"]["sc"], by["b"]["pq"]) == (10, 9)
    assert (by["c"]["sc"], by["c"]["pq"]) == (5, 3)  # after one malformed reply
    assert by["d"]["error"] and "parse" in by["d"]["error"] and "sc" not in by["d"]

    s = aggregate(rows)
    t1, t2 = s["groups"]["t1"], s["groups"]["t2"]
    assert t1["overall"] == pytest.approx((math.sqrt(24) + math.sqrt(90)) / 2)
    assert t1["sc"] == pytest.approx(8.0) and t1["pq"] == pytest.approx(6.5)
    assert (t2["n"], t2["failed"]) == (1, 1) and t2["overall"] == pytest.approx(math.sqrt(15))
    # the mean over task types, not over samples
    assert s["overall"] == pytest.approx((t1["overall"] + t2["overall"]) / 2)
    assert s["overall"] != pytest.approx((math.sqrt(24) + math.sqrt(90) + math.sqrt(15)) / 3)
    assert (s["n"], s["failed"]) == (3, 1)

    sc_reqs = [r for r in server.requests if r["kind"] == "sc"]
    pq_reqs = [r for r in server.requests if r["kind"] == "pq"]
    # the edit is resized to the source size before judging; PQ sees the edit alone
    assert all(r["sizes"] == [(12, 8), (12, 8)] for r in sc_reqs)
    assert all(r["sizes"] == [(12, 8)] for r in pq_reqs)
    assert all(r["path"] == "/v1/chat/completions" and r["temperature"] == 0 for r in sc_reqs)
    assert any("edit c" in r["text"] for r in sc_reqs)
    # A, B: 1 SC call; C: 2; D: 1 + 2 re-asks and no PQ call
    assert len(sc_reqs) == 1 + 1 + 2 + 3 and len(pq_reqs) == 3


def test_resume_skips_scored_samples_and_retries_failed(tmp_path, fake_judge):
    answers = {**ANSWERS}
    server = fake_judge(answers)
    out = tmp_path / "scores.jsonl"
    samples = make_samples(tmp_path)
    run_viescore(samples, judge_for(server), out, judge_name="fake-vl", progress=False)
    first = len(server.requests)

    # second run: only the failed sample D is judged again; this time the judge answers
    server.answers[("sc", D)] = [GOOD % (4, 9)]
    rows = run_viescore(samples, judge_for(server), out, judge_name="fake-vl", progress=False)
    new = server.requests[first:]
    assert {r["rgb"] for r in new} == {D} and len(new) == 2
    d = next(r for r in rows if r["key"] == "d")
    assert d["error"] is None and d["sc"] == 4 and d["pq"] == 7
    assert len(out.read_text().splitlines()) == 5  # 4 rows + D's new row; the last wins
    assert aggregate(rows)["failed"] == 0

    # third run: nothing left to do
    n = len(server.requests)
    run_viescore(samples, judge_for(server), out, judge_name="fake-vl", progress=False)
    assert len(server.requests) == n


def test_truncated_results_line_is_dropped_and_run_continues(tmp_path, fake_judge):
    server = fake_judge(ANSWERS)
    out = tmp_path / "scores.jsonl"
    samples = make_samples(tmp_path)[:2]
    run_viescore(samples[:1], judge_for(server), out, judge_name="fake-vl", progress=False)
    with open(out, "a") as f:
        f.write('{"id": "t1/en/b", "sc": 1')  # killed mid-write
    rows = run_viescore(samples, judge_for(server), out, judge_name="fake-vl", progress=False)
    assert [r["key"] for r in rows] == ["a", "b"] and rows[1]["sc"] == 10
    assert all(json.loads(x) for x in out.read_text().splitlines())


def test_malformed_line_in_the_middle_is_an_error(tmp_path):
    out = tmp_path / "scores.jsonl"
    out.write_text('{"id": "x"}\nnot json\n{"id": "y"}\n')
    with pytest.raises(ValueError, match=r"scores.jsonl:2"):
        read_results(out)


def test_results_from_another_judge_are_refused(tmp_path, fake_judge):
    server = fake_judge(ANSWERS)
    out = tmp_path / "scores.jsonl"
    samples = make_samples(tmp_path)[:1]
    run_viescore(samples, judge_for(server), out, judge_name="fake-vl", progress=False)
    with pytest.raises(ValueError, match="other-judge|fake-vl"):
        run_viescore(samples, judge_for(server), out, judge_name="other-judge", progress=False)


def test_http_errors_are_retried(tmp_path, fake_judge):
    server = fake_judge(ANSWERS, fail_first=2)
    s = make_samples(tmp_path)[0]
    res = score_triple(judge_for(server), s.load_source(), Image.open(s.edited_path), "x")
    assert (res.sc, res.pq) == (6, 4)
    assert len(server.requests) == 4  # 2 failures, then SC and PQ


def test_judge_down_aborts_and_keeps_progress(tmp_path, fake_judge):
    server = fake_judge(ANSWERS, fail_first=100)
    with pytest.raises(VLMError, match="attempt"):
        run_viescore(
            make_samples(tmp_path),
            judge_for(server, retries=1),
            tmp_path / "s.jsonl",
            judge_name="fake-vl",
            workers=1,
            progress=False,
        )


def test_missing_edits_fail_before_any_request(tmp_path, fake_judge):
    server = fake_judge(ANSWERS)
    samples = make_samples(tmp_path)
    samples[2].edited_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 4 .*c\.png"):
        run_viescore(
            samples, judge_for(server), tmp_path / "s.jsonl", judge_name="fake-vl", progress=False
        )
    assert server.requests == []


def test_duplicate_sample_ids_are_rejected(tmp_path):
    s = make_samples(tmp_path)
    with pytest.raises(ValueError, match="duplicate sample id"):
        run_viescore(
            [s[0], s[0]], lambda p, i: "", tmp_path / "x.jsonl", judge_name="j", progress=False
        )


# ----------------------------------------------------------------------------- CLI end to end


def test_cli_run_viescore_report(tmp_path, fake_judge):
    """eval run (identity) -> eval viescore (loopback judge) -> eval report with grids."""
    bench = tmp_path / "bench"
    (bench / "images").mkdir(parents=True)
    rows, answers = [], {}
    colours = {
        ("background_change", "k1"): (10, 20, 30),
        ("color_alter", "k2"): (40, 50, 60),
        ("color_alter", "k3"): (70, 80, 90),
    }
    for (task, key), rgb in colours.items():
        Image.new("RGB", (16, 12), rgb).save(bench / "images" / f"{key}.png")
        rows.append(
            {
                "task_type": task,
                "key": key,
                "instruction": f"do {key}",
                "instruction_language": "en",
                "input_image": f"images/{key}.png",
                "Intersection_exist": True,
            }
        )
        # identity edits: the edited image is the source colour
        answers[("sc", rgb)] = [GOOD % (2, 10)]
        answers[("pq", rgb)] = [GOOD % (9, 8)]
    (bench / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = tmp_path / "results"
    assert (
        cli_main(
            [
                "eval",
                "run",
                "--method",
                "identity",
                "--bench",
                str(bench),
                "--results",
                str(results),
            ]
        )
        == 0
    )
    server = fake_judge(answers)
    assert (
        cli_main(
            [
                "eval",
                "viescore",
                "--bench",
                str(bench),
                "--results",
                str(results),
                "--method",
                "identity",
                "--judge-url",
                server.url,
                "--judge-model",
                "fake-vl",
                "--api-key-env",
                "BYG_TEST_NO_SUCH_KEY",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    scores = read_results(results / "identity" / "viescore_en.jsonl")
    assert len(scores) == 3 and all(r["overall"] == pytest.approx(4.0) for r in scores.values())
    md = tmp_path / "report.md"
    assert (
        cli_main(
            [
                "eval",
                "report",
                "--results",
                str(results),
                "--methods",
                "identity",
                "--out",
                str(md),
                "--grid-html",
                str(tmp_path / "grid.html"),
                "--grid-png",
                str(tmp_path / "grid.png"),
            ]
        )
        == 0
    )
    text = md.read_text()
    assert "| Background change | 4.00 |" in text and "| **Average** | 4.00 |" in text
    assert "grid.html" in text and (tmp_path / "grid.png").exists()
