"""The generation service over real HTTP (issue 12): a real Ray Serve app on 127.0.0.1 serving two
tiny runs trained inside the test (tests/serve_fixture.py).

Every mode answers with MIDI the representation re-encodes; `continue` decodes its first new bar
under the upload's last bar (checked against the same decode done here, in-process); bad requests
get 4xx JSON naming the reason; concurrent requests share a batch; two checkpoints answer at once
and differently; a schemathesis run over the app's own OpenAPI schema finds no 5xx."""

from __future__ import annotations

import base64
import concurrent.futures as cf

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from mahler_dist.generate.generator import Generator, SampleRequest
from mahler_dist.generate.output import corpus_programs, parse_metre
from mahler_dist.music.encode import encode_bytes
from mahler_dist.music.midi_io import read_midi
from mahler_dist.serve import engine
from mahler_dist.serve.app import MAX_BODY_BYTES
from mahler_dist.serve.limits import LIMITS
from serve_fixture import serve_app  # noqa: F401  (the module-scoped fixture)

pytestmark = pytest.mark.integration


def post(app, body, headers=None, timeout=120):
    return requests.post(app["url"] + "/v1/generate", json=body, headers=headers or {}, timeout=timeout)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def reencodes(sample: dict) -> bool:
    """The answer's MIDI reads back through the project's reader and encoder with the notes the
    answer lists (onset and pitch; a note ringing past the last bar line adds a bar)."""
    data = base64.b64decode(sample["midi"])
    encoded = encode_bytes(data, "answer") if sample["events"] else None
    notes = {(int(n[0]), int(n[2])) for n in read_midi(data, "answer").notes} if encoded else set()
    return notes == {(e["start"], e["pitch"]) for e in sample["events"]} and (
        encoded is None or len(encoded.samples) >= len({e["bar"] for e in sample["events"]}))


MODES = {
    "pred": lambda app: {"mode": "pred", "bars": 3, "samples": 2, "seed": 11},
    "continue": lambda app: {"mode": "continue", "midi": b64(app["midi"]), "bars": 2, "seed": 5},
    "recon": lambda app: {"mode": "recon", "midi": b64(app["midi"]), "units": ["3cz", "4z"], "seed": 2},
    "recon_stored": lambda app: {"mode": "recon", "piece": "scn15_6", "units": ["1cz"], "teacher_forcing": True},
    "intpol": lambda app: {"mode": "intpol", "piece": "scn15_6.mid", "units": ["0cz", "5cz"], "steps": 3,
                           "slerp": True, "seed": 1},
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_answers_midi_the_representation_reencodes(serve_app, mode):
    body = MODES[mode](serve_app)
    r = post(serve_app, body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["mode"] == body["mode"] and answer["model"] == "a/best"
    assert r.headers["x-mahler-seed"] == str(answer["seed"])
    expected_bars = {"pred": 3, "recon": 2, "recon_stored": 1, "intpol": 4}.get(mode)
    for sample in answer["samples"]:
        assert base64.b64decode(sample["midi"])[:4] == b"MThd"
        n_bars = len(sample["metres"])
        if expected_bars is not None:
            assert n_bars == expected_bars
        assert len(sample["bar_starts"]) == n_bars
        assert reencodes(sample)
        assert sample["stats"]["notes"] == len(sample["events"])
        assert all(0 <= e["pitch"] < 128 and e["end"] > e["start"] for e in sample["events"])
    if mode.startswith("recon"):
        stats = answer["recon"]["stats"]
        assert stats["bars"] == len(body["units"]) and 0.0 <= stats["note_f1_micro"] <= 1.0
        assert len(answer["recon"]["original"]["metres"]) == len(body["units"])
    # the same request as MIDI: the file itself, with the seed to reproduce it
    one = {**body, "samples": 1, "seed": answer["seed"]} if body["mode"] != "intpol" else body
    m = post(serve_app, one, headers={"Accept": "audio/midi"})
    assert m.status_code == 200 and m.headers["content-type"] == "audio/midi", m.text
    assert m.content[:4] == b"MThd" and m.headers["x-mahler-seed"] == str(answer["seed"])
    assert m.content == base64.b64decode(answer["samples"][0]["midi"])   # seeded: reproducible


def test_continue_decodes_its_first_bar_under_the_uploads_last_bar(serve_app):
    upload = encode_bytes(serve_app["midi"], "upload").samples
    r = post(serve_app, {"mode": "continue", "midi": b64(serve_app["midi"]), "bars": 2, "seed": 9,
                         "temperature": 0.8})
    assert r.status_code == 200, r.text
    answer = r.json()
    ctx = answer["context"]
    assert ctx["source"] == "upload" and ctx["bar"] == len(upload) - 1
    assert np.array_equal(np.asarray(ctx["rows"]), upload[-1].inputs)       # the context the model got
    sample = answer["samples"][0]
    assert sample["new_from_bar"] == len(upload) and len(sample["metres"]) == len(upload) + 2
    # the answer begins with the upload, bar for bar (as the representation quantised it)
    assert sample["metres"][:len(upload)] == [w.metre for w in upload]
    # and its new bars are exactly what this checkpoint decodes under that context, here, in-process
    gen = Generator.from_run(serve_app["root"], "a", "best")
    metre = parse_metre(upload[-1].metre)
    temps = engine.Temperatures(0.8, 0.8, 0.8, 0.8)
    decoded = gen.sample_many([SampleRequest(2, 9, 0, temps, metre, upload[-1].inputs, None, upload[-1].metre)])[0]
    local = engine.sample_out([w.inputs for w in upload] + decoded,
                              [parse_metre(w.metre) for w in upload] + [metre] * 2,
                              corpus_programs(serve_app["root"]), new_from_bar=len(upload))
    assert local.midi == sample["midi"]
    start = gen.sample_many([SampleRequest(2, 9, 0, temps, metre, "start")])[0]
    assert any(not np.array_equal(a, b) for a, b in zip(start, decoded))       # the context mattered


def test_a_seed_reproduces_an_answer_and_an_unseeded_answer_reports_its_seed(serve_app):
    first = post(serve_app, {"bars": 2}).json()
    again = post(serve_app, {"bars": 2, "seed": first["seed"]}).json()
    assert again["samples"][0]["midi"] == first["samples"][0]["midi"]


def test_two_checkpoints_are_served_at_once_and_answer_differently(serve_app):
    models = {m["id"]: m for m in requests.get(serve_app["url"] + "/v1/models", timeout=30).json()}
    assert {"a/best", "a/checkpoint_epoch0001", "a/checkpoint_epoch0002", "b/best"} <= set(models)
    assert models["a/best"]["default"] and not models["b/best"]["default"]
    body = {"bars": 2, "seed": 4}
    with cf.ThreadPoolExecutor(3) as pool:
        futures = {m: pool.submit(post, serve_app, {**body, "model": m})
                   for m in ("a/checkpoint_epoch0001", "a/checkpoint_epoch0002", "b/best")}
        answers = {m: f.result().json() for m, f in futures.items()}
    midis = {m: a["samples"][0]["midi"] for m, a in answers.items()}
    assert len(set(midis.values())) == 3, "three checkpoints, three answers"
    assert all(answers[m]["model"] == m for m in answers)
    # the multiplexing header routes the same way as the body's model
    by_header = post(serve_app, body, headers={"serve_multiplexed_model_id": "b/best"}).json()
    assert by_header["model"] == "b/best" and by_header["samples"][0]["midi"] == midis["b/best"]


def test_concurrent_requests_are_decoded_in_one_batch(serve_app):
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: post(serve_app, {"bars": 2, "seed": i}).json(), range(8)))
    assert max(a["batch_size"] for a in answers) > 1
    # batching does not change an answer: each request's randomness is its own
    alone = post(serve_app, {"bars": 2, "seed": 3}).json()
    assert alone["samples"][0]["midi"] == answers[3]["samples"][0]["midi"]
    health = requests.get(serve_app["url"] + "/healthz", timeout=30).json()
    assert health["status"] == "ok" and any(int(k) > 1 for k in health["batches"])
    assert health["device"] == "cpu"        # no GPU asked for (ray_actor_options.num_gpus: 0)



def _bad_requests(app):
    midi = app["midi"]
    return [
        ({"bars": "many"}, 422, "bars"),
        ({"bars": 0}, 422, "bars"),
        ({"bars": LIMITS.max_bars + 1}, 422, "bars"),
        ({"samples": 8, "bars": 64}, 422, "decodes 512 bars"),
        ({"temperature": -1}, 422, "temperature"),
        ({"temperature": 1e9}, 422, "temperature"),
        ({"mode": "sing"}, 422, "mode"),
        ({"colour": "blue"}, 422, "colour"),
        ({"mode": "continue"}, 422, "needs midi"),
        ({"mode": "continue", "midi": b64(b"RIFF not a midi file")}, 400, "not a MIDI file"),
        ({"mode": "continue", "midi": b64(midi[: len(midi) // 2])}, 400, "upload"),
        ({"mode": "continue", "midi": "%%%not base64%%%"}, 422, "midi"),
        ({"mode": "recon", "midi": b64(midi)}, 422, "needs units"),
        ({"mode": "recon", "midi": b64(midi), "units": ["99cz"]}, 422, "names bar 99"),
        ({"mode": "recon", "midi": b64(midi), "units": ["1c"]}, 422, "needs z"),
        ({"mode": "intpol", "midi": b64(midi), "units": ["1cz"]}, 422, "exactly two"),
        ({"mode": "recon", "piece": "no_such_piece", "units": ["1cz"]}, 404, "no such piece"),
        ({"mode": "recon", "piece": "../../etc/passwd", "units": ["1cz"]}, 422, "piece"),
        ({"model": "zz"}, 404, "no such run"),
        ({"model": "a/checkpoint_epoch0099"}, 404, "no such run"),
        ({"model": "../a"}, 422, "model"),
        ({"model": "a/../../etc"}, 422, "model"),
        ({"model": "/etc/passwd"}, 422, "model"),
    ]


def test_bad_requests_get_a_4xx_json_error_that_names_the_reason(serve_app):
    for body, status, reason in _bad_requests(serve_app):
        r = post(serve_app, body)
        assert r.status_code == status, (body if len(str(body)) < 200 else list(body), r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("application/json")
        assert reason in r.json()["error"], (r.json()["error"], reason)


def test_oversized_malformed_and_mismatched_requests_are_refused(serve_app):
    url = serve_app["url"] + "/v1/generate"
    big = requests.post(url, data=b"{" + b" " * (MAX_BODY_BYTES + 10) + b"}",
                        headers={"Content-Type": "application/json"}, timeout=60)
    assert big.status_code == 413 and "over" in big.json()["error"]
    huge_upload = post(serve_app, {"mode": "continue", "midi": "A" * (LIMITS.max_upload_b64 + 4)})
    assert huge_upload.status_code in (413, 422)
    not_json = requests.post(url, data=b"{mode: pred", headers={"Content-Type": "application/json"}, timeout=30)
    assert not_json.status_code == 422 and "error" in not_json.json()
    mismatch = post(serve_app, {"model": "a/best"}, headers={"serve_multiplexed_model_id": "b/best"})
    assert mismatch.status_code == 400 and "header" in mismatch.json()["error"]
    many_as_midi = post(serve_app, {"samples": 2}, headers={"Accept": "audio/midi"})
    assert many_as_midi.status_code == 406


def test_the_api_describes_itself(serve_app):
    schema = requests.get(serve_app["url"] + "/openapi.json", timeout=30).json()
    assert {"/v1/generate", "/v1/models", "/healthz"} <= set(schema["paths"])
    page = requests.get(serve_app["url"] + "/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_from_the_apps_own_schema_gets_a_server_error(serve_app, mode):
    """schemathesis draws requests from the served OpenAPI schema: valid ones (positive) and ones
    that break it (negative); every answer is below 500, and every error is JSON with a reason."""
    from schemathesis.generation import GenerationMode

    doc = requests.get(serve_app["url"] + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    seen: list[int] = []
    operations = [("/v1/generate", "POST")] + ([("/v1/models", "GET"), ("/healthz", "GET")]
                                              if mode == "positive" else [])   # nothing to break in a bare GET
    for path, method in operations:
        operation = schema[path][method]

        @settings(max_examples=30 if method == "POST" else 3, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        def check(case):
            response = case.call(base_url=serve_app["url"], timeout=120)
            seen.append(response.status_code)
            assert response.status_code < 500, (path, str(case.body)[:300], response.text[:300])
            if response.status_code >= 400:
                assert "error" in response.json()

        check()
    assert len(seen) >= 10 and (mode == "positive" or any(400 <= c < 500 for c in seen))


@pytest.mark.parametrize("how", ["ctrl-c", "script"])
def test_mahler_serve_serves_until_interrupted_then_stops(serve_app, tmp_path, how):
    """The CLI as a user runs it: its own local Ray, a default run, the page and the API.
    ctrl-c: SIGINT in the foreground. script: a background job of a shell script (as
    scripts/demo.sh runs it), where SIGINT is ignored, so the server says to send SIGTERM, and
    SIGTERM stops it. Either way Serve and that Ray shut down and the exit status is 0."""
    import os
    import shlex
    import signal
    import subprocess
    import sys
    import time

    from serve_fixture import free_port, wait_http

    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w+")
    argv = [sys.executable, "-m", "mahler_dist.cli", "serve", "b", "--root", str(serve_app["root"]),
            "--port", str(port), "--max-batch-size", "4"]
    if how == "script":        # the shell reports the server's PID, then waits for it
        script = f"{shlex.join(argv)} & echo $! > server.pid; wait $!"
        proc = subprocess.Popen(["bash", "-c", script], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    else:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    expected = "SIGTERM to stop" if how == "script" else "Ctrl-C to stop"
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=180)
        answer = requests.post(f"http://127.0.0.1:{port}/v1/generate", json={"bars": 1, "seed": 1}, timeout=120).json()
        assert answer["model"] == "b/best"          # NAME is the default model
        deadline = time.monotonic() + 60
        while "to stop" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert expected in log_path.read_text()
        if how == "script":
            os.kill(int((tmp_path / "server.pid").read_text()), signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        pid_file = tmp_path / "server.pid"
        if pid_file.exists():                       # the server itself, not only its shell
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.seek(0)
        text = log.read()
    assert f"serving b/best" in text and "stopping the server" in text, text[-2000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
