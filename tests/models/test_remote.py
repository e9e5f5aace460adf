"""The remote backend against a real `transformers serve` on loopback, serving a tiny real SmolVLM.

The server starts once per session (a few seconds); every request in these tests is a real HTTP request
to it, or to a real socket that accepts connections and never answers, or to a closed port.
"""

import logging
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from glue_astrovlm import AstroVLMError, LabelSet, OperationCancelled, load_model, load_preset
from glue_astrovlm.models.remote import RemoteVLM, ServerRefused, letter_probabilities, lettered_prompt

SERVER_START_LIMIT = 120.0  # seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def served_model_dir(tmp_path_factory):
    """A tiny SmolVLM (Idefics3) with the real tokenizer, processor and chat template, random weights."""
    from glue_astrovlm.testing import SHARED_SMOLVLM_CONFIG, build_smolvlm

    if not SHARED_SMOLVLM_CONFIG.is_dir():
        pytest.skip(f"model configuration {SHARED_SMOLVLM_CONFIG} is not available")
    return build_smolvlm(tmp_path_factory.mktemp("served-smolvlm"))


@pytest.fixture(scope="session")
def served(served_model_dir, tmp_path_factory):
    """``transformers serve`` pinned to the tiny SmolVLM on 127.0.0.1; yields its API root URL.

    SmolVLM's processor (Idefics3) cannot encode the control-token-sanitised prompts of /v1/systemone in
    transformers 5.23, so the server gets a decision config that turns that sanitising off.
    """
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    folder = tmp_path_factory.mktemp("served")
    decision_config = folder / "decision.json"
    decision_config.write_text('{"sanitize_control_tokens": false}\n')
    (folder / "hf-cache").mkdir()
    port = _free_port()
    # offline, and an empty cache: the server has nothing to download and nothing else to list
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_CACHE": str(folder / "hf-cache"), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(served_model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               "--decision-config", str(decision_config)]
    log_path = folder / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SERVER_START_LIMIT
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n"
                            f"{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start within {SERVER_START_LIMIT:g} s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield {"url": f"http://127.0.0.1:{port}/v1", "model": str(served_model_dir), "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def remote(served):
    with RemoteVLM(served["url"], timeout=60, concurrency=2) as vlm:
        yield vlm


@pytest.fixture(scope="module")
def images():
    """Three small images of different shapes, so a result's bounding box says which image it is for."""
    rng = np.random.default_rng(7)
    arrays = [rng.normal(size=shape) for shape in [(32, 32), (40, 48), (48, 40)]]
    arrays[0][12:20, 8:24] += 6.0
    return arrays


@pytest.fixture()
def silent_server():
    """A real TCP listener on 127.0.0.1 that accepts connections, reads what arrives, and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    received: list[bytes] = []
    connections = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            connection.settimeout(0.2)
            connections.append(connection)
            try:
                received.append(connection.recv(65536))
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{listener.getsockname()[1]}/v1", "received": received}
    stop.set()
    thread.join(timeout=2)
    for connection in connections:
        connection.close()
    listener.close()


def _bbox(shape):
    return (0, shape[1], 0, shape[0])


# ---------------------------------------------------------------------------------------------- real server
def test_server_model_is_discovered_and_named(served, remote):
    import httpx

    # What GET /models lists depends on the transformers release (5.23 listed its empty cache, 5.24 lists
    # the pinned model); the backend must follow whatever the server says.
    listed = [entry["id"] for entry in httpx.get(served["url"] + "/models", timeout=10).json().get("data", [])]
    if len(listed) == 1:
        assert remote.model == listed[0]
        assert remote.name == f"{listed[0]} @ {served['url']}"
    else:
        assert not listed and remote.model is None
        assert remote.name == f"{served['url']} (the server's model)"
    named = RemoteVLM(served["url"], served["model"])
    assert named.name == f"{served['model']} @ {served['url']}"
    assert repr(named) == f"<RemoteVLM {named.name!r}>"
    named.close()
    # load_model hands a URL and its options to this backend; a URL without a path gets /v1
    loaded = load_model(served["url"][:-len("/v1")], timeout=30, concurrency=3)
    assert isinstance(loaded, RemoteVLM) and loaded.base_url == served["url"] and loaded.concurrency == 3
    loaded.close()


@pytest.fixture()
def listing_server():
    """A real HTTP server on 127.0.0.1 whose GET /v1/models answers what the test puts in ``state``."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"status": 200, "models": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            body = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in state["models"]]})
            self.send_response(state["status"] if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("models, expected", [([], None), (["served-one"], "served-one")])
def test_model_discovery_follows_the_servers_listing(listing_server, models, expected):
    listing_server["models"] = models
    with RemoteVLM(listing_server["url"]) as vlm:
        assert vlm.model == expected
        assert vlm.name == (f"{expected} @ {listing_server['url']}" if expected
                            else f"{listing_server['url']} (the server's model)")


def test_model_discovery_with_several_models_asks_which(listing_server):
    listing_server["models"] = ["a", "b"]
    with pytest.raises(AstroVLMError, match=r"serves 2 models: a, b.*served_model=NAME"):
        RemoteVLM(listing_server["url"])
    listing_server["status"] = 404  # a server that does not list its models: requests name none
    with RemoteVLM(listing_server["url"]) as vlm:
        assert vlm.model is None


def test_ask_returns_text_in_input_order(remote, images):
    calls = []
    results = remote.ask(images, "What is in this image?", max_new_tokens=3,
                         progress=lambda done, total: calls.append((done, total)))
    assert [r.provenance.bbox for r in results] == [_bbox(a.shape) for a in images]
    assert all(r.task == "ask" and isinstance(r.answer, str) for r in results)
    assert all(r.model == remote.name and r.image_tokens and r.image_tokens > 100 for r in results)
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_ask_names_the_pinned_model_explicitly(served, images):
    with RemoteVLM(served["url"], served["model"]) as vlm:
        result, = vlm.ask(images[0], "Describe it.", max_new_tokens=2)
    assert result.model == f"{served['model']} @ {served['url']}"


def test_classify_scores_every_label_through_systemone(remote, images):
    labels = load_preset("radio-morphology")
    results = remote.classify(images[:2], labels)
    assert remote.resolved_classify_method == "systemone"
    for result, image in zip(results, images):
        assert list(result.probabilities) == list(labels.labels)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-9)
        assert all(0.0 <= p <= 1.0 for p in result.probabilities.values())
        assert result.label == max(result.probabilities, key=result.probabilities.get)
        assert result.provenance.bbox == _bbox(image.shape)
        assert result.prompt == lettered_prompt(labels)
        assert result.image_tokens > 100
    assert results[0].probabilities != results[1].probabilities  # different images, different scores


def test_permuting_labels_permutes_probabilities(remote, images):
    labels = load_preset("radio-morphology")
    first = remote.classify(images[:2], labels)
    second = remote.classify(images[:2], labels.permuted([2, 0, 3, 1]))
    for a, b in zip(first, second):
        assert list(b.probabilities) == [labels.labels[i] for i in [2, 0, 3, 1]]
        for label in labels.labels:
            assert a.probabilities[label] == pytest.approx(b.probabilities[label], abs=1e-4)
        assert a.prompt_hash == b.prompt_hash


def test_logprobs_method_on_transformers_serve_says_what_to_do(served, images):
    with RemoteVLM(served["url"], classify_method="logprobs") as vlm:
        with pytest.raises(AstroVLMError, match="no log-probabilities.*systemone"):
            vlm.classify(images[0], ["round", "elongated"])


def test_client_errors_are_not_retried(served, images):
    with RemoteVLM(served["url"], "not-the-served-model", max_retries=3, backoff=5.0) as vlm:
        began = time.monotonic()
        with pytest.raises(ServerRefused, match=r"answered POST with HTTP 400: Server is pinned") as info:
            vlm.ask(images[0], "What is it?", max_new_tokens=1)
    assert time.monotonic() - began < 3.0 and "tries" not in str(info.value)


def test_cancel_before_the_call_sends_nothing(remote, images):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(OperationCancelled) as info:
        remote.ask(images, "What is it?", max_new_tokens=1, cancel=cancel)
    assert info.value.results == []


def test_cancel_after_the_first_result_keeps_it(served, images):
    cancel = threading.Event()
    calls = []

    def progress(done, total):
        calls.append((done, total))
        cancel.set()

    with RemoteVLM(served["url"], concurrency=1) as vlm:
        with pytest.raises(OperationCancelled) as info:
            vlm.ask(images, "What is it?", max_new_tokens=1, progress=progress, cancel=cancel)
    assert calls == [(1, 3)]
    assert [r.provenance.bbox for r in info.value.results] == [_bbox(images[0].shape)]


def test_api_key_is_sent_but_never_shown(served, silent_server, images, monkeypatch, caplog):
    secret = "sk-astrovlm-test-0123456789"
    monkeypatch.setenv("ASTROVLM_API_KEY", secret)
    caplog.set_level(logging.DEBUG)
    shown = []

    # an HTTP error from the real server (it is pinned to another model)
    with RemoteVLM(served["url"], "not-the-served-model", max_retries=0) as vlm:
        shown += [repr(vlm), vlm.name, str(vars(vlm).get("name"))]
        with pytest.raises(ServerRefused) as refused:
            vlm.ask(images[0], "What is it?", max_new_tokens=1)
        assert refused.value.status == 400 and "pinned" in str(refused.value)
        shown.append(str(refused.value))
    # a real answer
    with RemoteVLM(served["url"]) as vlm:
        result, = vlm.classify(images[0], ["round", "elongated"])
        shown += [str(result), str(result.to_row())]
    # a server that never answers: the key went out in the header, and does not come back in the error
    with RemoteVLM(silent_server["url"], "m", timeout=0.3, max_retries=0) as vlm:
        with pytest.raises(AstroVLMError) as timed_out:
            vlm.ask(images[0], "What is it?")
        shown.append(str(timed_out.value))
    assert any(f"Bearer {secret}".encode() in data for data in silent_server["received"])

    shown.append(caplog.text)
    assert caplog.records  # something was logged at all
    for text in shown:
        assert secret not in text


# ---------------------------------------------------------------------------------------------- failures
def test_server_that_never_answers_gives_a_clear_error_in_time(silent_server, images):
    vlm = RemoteVLM(silent_server["url"], "m", timeout=0.5, max_retries=1, backoff=0.1)
    began = time.monotonic()
    with pytest.raises(AstroVLMError, match=r"did not answer within 0.5 s after 2 tries.*--timeout"):
        vlm.ask(images[0], "What is it?")
    assert time.monotonic() - began < 2 * 0.5 + 0.1 + 1.5
    assert len(silent_server["received"]) == 2  # one connection per try
    vlm.close()


def test_model_discovery_on_a_silent_server_fails_in_time(silent_server):
    began = time.monotonic()
    with pytest.raises(AstroVLMError, match=r"did not answer within 0.3 s after 1 try\b"):
        RemoteVLM(silent_server["url"], timeout=0.3, max_retries=0)
    assert time.monotonic() - began < 2.0


def test_unreachable_server_gives_a_clear_error(images):
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there any more
    vlm = RemoteVLM(url, "m", max_retries=2, backoff=0.05)
    with pytest.raises(AstroVLMError, match=r"Could not connect to the server at .* after 3 tries.*running"):
        vlm.classify(images[0], ["round", "elongated"])
    vlm.close()


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(AstroVLMError, match="classify_method must be one of"):
        RemoteVLM("http://127.0.0.1:9/v1", "m", classify_method="guess")
    with pytest.raises(AstroVLMError, match="not an http"):
        RemoteVLM("127.0.0.1:8000", "m")
    with pytest.raises(AstroVLMError, match="at most 26 labels"):
        lettered_prompt(LabelSet(tuple(f"class{i}" for i in range(27))))
    vlm = RemoteVLM("http://user:pass@127.0.0.1:9", "m")
    assert vlm.base_url.endswith("/v1") and "pass" not in vlm.name
    vlm.close()


# ------------------------------------------------------------------------------------------ pure functions
def test_lettered_prompt_lists_options_in_canonical_order():
    labels = LabelSet(("spiral", "Elliptical", "merger"), ("has arms", "", "two nuclei"), "What is it?")
    assert lettered_prompt(labels) == ("What is it?\n\nA. Elliptical\nB. merger: two nuclei\n"
                                       "C. spiral: has arms\n"
                                       "Answer with the letter of the option that fits best (A to C) only.")
    assert lettered_prompt(labels.permuted([2, 1, 0])) == lettered_prompt(labels)


def test_letter_probabilities_from_vllm_top_logprobs():
    top = [{"token": "B", "logprob": -0.2}, {"token": " A", "logprob": -2.0}, {"token": "A", "logprob": -3.0},
           {"token": "The", "logprob": -4.0}, {"token": "\n", "logprob": -6.0}]
    probabilities, found = letter_probabilities(top, 3)
    assert found == 2
    p_a = np.exp(-2.0) + np.exp(-3.0)  # " A" and "A" both answer A
    raw = np.array([p_a, np.exp(-0.2), np.exp(-6.0 - np.log(10.0))])  # C: not listed
    np.testing.assert_allclose(probabilities, raw / raw.sum(), rtol=1e-12)
    uniform, found = letter_probabilities([{"token": "The", "logprob": -0.1}], 4)
    assert found == 0 and uniform == [0.25] * 4
