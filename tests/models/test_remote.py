"""The remote backend against a real `transformers serve` on loopback, serving a tiny real SmolVLM.

The server starts once per session (a few seconds); every request in these tests is a real HTTP request
to it, or to a real socket that accepts connections and never answers, or to a closed port.
"""

import base64
import json
import logging
import re
import socket
import threading
import time

import numpy as np
import pytest

from glue_astrovlm import AstroVLMError, LabelSet, OperationCancelled, load_model, load_preset
from glue_astrovlm.models.base import as_model_images
from glue_astrovlm.models.remote import RemoteVLM, ServerRefused, letter_probabilities, lettered_prompt

from ..conftest import free_port as _free_port


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


def test_api_key_is_sent_but_never_shown(served, silent_server, chat_server, images, monkeypatch, caplog):
    secret = "sk-astrovlm-test-0123456789"
    openai_secret = "sk-openai-test-9876543210"  # set too, and never sent to these servers
    monkeypatch.setenv("ASTROVLM_API_KEY", secret)
    monkeypatch.setenv("OPENAI_API_KEY", openai_secret)
    _all_loggers_at_debug(caplog)
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
    # a server that echoes the key back in its error, then one that answers malformed JSON holding it
    with RemoteVLM(chat_server.url, max_retries=0) as vlm:
        shown += [repr(vlm), vlm.name]
        chat_server.respond = lambda method, path, body: (
            (401, {}, f'{{"detail": "bad key {secret}"}}'.encode()) if path.endswith("completions") else None)
        with pytest.raises(ServerRefused) as echoed:
            vlm.ask(images[0], "What is it?")
        chat_server.respond = lambda method, path, body: (
            (200, {}, f'{{"choices": [{{"message": {{"content": ["{secret}"]}}}}]}}'.encode())
            if path == "/v1/chat/completions" else None)
        with pytest.raises(AstroVLMError) as malformed:
            vlm.ask(images[0], "What is it?")
        shown += [str(echoed.value), echoed.value.detail, str(malformed.value)]
    assert "***" in echoed.value.detail and "***" in str(malformed.value)
    assert all(r[2]["authorization"] == f"Bearer {secret}" for r in chat_server.requests)
    assert not any(openai_secret.encode() in data for data in silent_server["received"])

    shown.append(caplog.text)
    assert any(r.name == "httpx" for r in caplog.records)  # every logger was captured, httpx's too
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    for text in shown:
        assert secret not in text and openai_secret not in text


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


# ------------------------------------------------------------------------- issue 9: one deadline per request
@pytest.mark.timeout(60)  # the trickle server gives up after 8 s
def test_trickling_answer_times_out_within_the_limit_on_every_try(trickle_server, images):
    # headers at once, then one byte a second: no single read waits long enough to time out
    server = trickle_server("body", interval=1.0)
    as_model_images(images[0])  # the first stretch imports matplotlib: not part of the request's time
    began = time.monotonic()
    with RemoteVLM(server.url, "m", timeout=1.5, max_retries=1, backoff=0.1) as vlm:
        with pytest.raises(AstroVLMError, match=r"did not answer within 1.5 s after 2 tries \(ReadTimeout"
                                                 r".*whole request.*--timeout / timeout=") as info:
            vlm.ask(images[0], "What is it?")
    elapsed = time.monotonic() - began
    assert 2 * 1.5 <= elapsed < 2 * 1.5 + 0.1 + 1.0
    assert server.connections == 2 and all(sent >= 1 for sent in server.sent)  # bytes did arrive in time
    assert info.value.results == []


@pytest.mark.timeout(60)  # the trickle server gives up after 8 s
def test_trickling_headers_time_out_within_the_limit(trickle_server):
    # the status line itself arrives one byte at a time, here during model discovery (GET /models)
    server = trickle_server("headers", interval=0.25)
    began = time.monotonic()
    with pytest.raises(AstroVLMError, match=r"within 1 s after 1 try \(ReadTimeout on GET /models"):
        RemoteVLM(server.url, timeout=1.0, max_retries=0)
    assert 1.0 <= time.monotonic() - began < 2.0
    assert server.sent[0] >= 2


# ------------------------------------------------------------------------ issue 9: nothing finished is lost
def _distinct_images(count):
    """``count`` small arrays of different widths, so each result's bounding box names its image."""
    rng = np.random.default_rng(3)
    return [rng.normal(size=(16, 16 + i)) for i in range(count)]


_FAULT_MESSAGES = {
    "reset": r"(Could not connect to the server|The connection to the server .* broke off).* 2 tries",
    "close": r"(Could not connect to the server|The connection to the server .* broke off).* 2 tries",
    "503": r"HTTP 503 after 2 tries: CUDA error.*see its log",
}


def _scoring_requests(server):
    return [r for r in server.requests if r[1] in ("/v1/chat/completions", "/v1/systemone")]


@pytest.mark.parametrize("fault", ["reset", "close", "503", "malformed"])
@pytest.mark.parametrize("task", ["ask", "describe", "classify-auto", "classify-logprobs"])
def test_server_dying_mid_run_keeps_the_finished_results(chat_server, task, fault):
    arrays = _distinct_images(50)
    chat_server.die_after(6, fault)
    method = "logprobs" if task == "classify-logprobs" else "auto"
    with RemoteVLM(chat_server.url, concurrency=4, max_retries=1, backoff=0.01,
                   classify_method=method) as vlm:
        began = time.monotonic()
        with pytest.raises(AstroVLMError) as info:
            if task == "ask":
                vlm.ask(arrays, "What is it?", max_new_tokens=4)
            elif task == "describe":
                vlm.describe(arrays, max_new_tokens=4)
            else:
                vlm.classify(arrays, ["round", "elongated"])
    assert time.monotonic() - began < 5.0
    error = info.value
    malformed = r"(a message content that is neither text|no probabilities|unusable top_logprobs)"
    message = _FAULT_MESSAGES.get(fault, r"answered POST /(chat/completions|systemone) with " + malformed)
    assert re.search(message, str(error)), str(error)
    assert chat_server.url in str(error) and "\n" not in str(error)
    widths = [r.provenance.bbox[1] for r in error.results]
    assert len(widths) == 6 and widths == sorted(widths)  # the six answers, in input order
    assert set(widths) <= {a.shape[1] for a in arrays}
    if task.startswith("classify"):
        assert all(r.label in ("round", "elongated") and r.probabilities for r in error.results)
    else:
        assert all(r.answer.startswith("answer ") for r in error.results)
    # nothing is sent after the failure but the retries of the requests already in flight
    assert len(_scoring_requests(chat_server)) <= 6 + 4 * 2


def test_one_at_a_time_the_finished_results_are_the_first_ones(chat_server):
    arrays = _distinct_images(20)
    chat_server.die_after(6, "reset")
    with RemoteVLM(chat_server.url, concurrency=1, max_retries=0) as vlm:
        with pytest.raises(AstroVLMError) as info:
            vlm.ask(arrays, "What is it?", max_new_tokens=2)
    assert [r.provenance.bbox for r in info.value.results] == [_bbox(a.shape) for a in arrays[:6]]
    assert len(_scoring_requests(chat_server)) == 7


@pytest.mark.parametrize("task", ["ask", "classify"])
def test_failure_before_any_answer_carries_empty_results(chat_server, task):
    chat_server.die_after(0, "malformed")
    with RemoteVLM(chat_server.url, max_retries=0) as vlm:
        with pytest.raises(AstroVLMError) as info:
            if task == "ask":
                vlm.ask(_distinct_images(3), "What is it?")
            else:
                vlm.classify(_distinct_images(3), ["round", "elongated"])
    assert info.value.results == []


def test_a_request_that_fails_for_good_stops_the_retries_of_the_others(chat_server):
    # the first request to arrive gets 503 with Retry-After 20 s; the second a 400, which is not retried
    def respond(method, path, body):
        if path == "/v1/chat/completions":
            count = len(_scoring_requests(chat_server))
            if count == 1:
                return 503, {"Retry-After": "20"}, b'{"detail": "busy"}'
            return 400, {}, b'{"detail": "bad image"}'
        return None

    chat_server.respond = respond
    with RemoteVLM(chat_server.url, concurrency=2, max_retries=3) as vlm:
        began = time.monotonic()
        with pytest.raises(ServerRefused, match="HTTP 400: bad image") as info:
            vlm.ask(_distinct_images(2), "What is it?")
    assert time.monotonic() - began < 2.0  # not 20 s of waiting for a retry nobody needs
    assert info.value.results == [] and len(_scoring_requests(chat_server)) == 2


# ------------------------------------------------------------------------------ issue 9: keys and passwords
def test_openai_key_goes_only_to_openai(chat_server, images, monkeypatch):
    openai_secret, own_secret = "sk-openai-secret-4711", "sk-own-secret-0815"
    monkeypatch.delenv("ASTROVLM_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", openai_secret)
    with RemoteVLM(chat_server.url) as vlm:
        vlm.ask(images[0], "What is it?", max_new_tokens=2)
        assert vlm.api_key_source is None
    assert chat_server.requests and not any("authorization" in r[2] for r in chat_server.requests)
    # OpenAI's key goes to OpenAI's API only: https and exactly its host
    for url, source in [("https://api.openai.com/v1", "OPENAI_API_KEY"),
                        ("https://API.OpenAI.com:443/v1", "OPENAI_API_KEY"),
                        ("http://api.openai.com/v1", None),
                        ("https://api.openai.com.example.org/v1", None),
                        ("https://example.org/api.openai.com/v1", None)]:
        with RemoteVLM(url, "gpt-4o-mini") as vlm:
            assert vlm.api_key_source == source, url
    # the project's own key (or the variable the user names) goes to the server the user chose
    monkeypatch.setenv("ASTROVLM_API_KEY", own_secret)
    monkeypatch.setenv("MY_SERVER_KEY", "sk-named-secret-42")
    with RemoteVLM(chat_server.url) as vlm:
        vlm.ask(images[0], "What is it?", max_new_tokens=2)
        assert vlm.api_key_source == "ASTROVLM_API_KEY"
    with RemoteVLM(chat_server.url, api_key_env="MY_SERVER_KEY") as vlm:
        vlm.ask(images[0], "What is it?", max_new_tokens=2)
    sent = [r[2].get("authorization") for r in chat_server.requests]
    assert f"Bearer {own_secret}" in sent and "Bearer sk-named-secret-42" in sent
    assert not any(openai_secret in (value or "") for value in sent)
    with RemoteVLM("https://api.openai.com/v1", "gpt-4o-mini") as vlm:
        assert vlm.api_key_source == "ASTROVLM_API_KEY"  # the project's variable comes first


def test_unauthorised_answer_says_which_key_was_sent(chat_server, images, monkeypatch):
    secret = "sk-openai-secret-1234"
    monkeypatch.delenv("ASTROVLM_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    chat_server.respond = lambda method, path, body: (401, {}, b'{"error": {"message": "Unauthorized"}}')
    with pytest.raises(ServerRefused, match=r"HTTP 401: Unauthorized\. .*no key \(\$ASTROVLM_API_KEY is "
                                            r"unset\).*OPENAI_API_KEY is set but is sent only to "
                                            r"https://api\.openai\.com") as info:
        RemoteVLM(chat_server.url)
    assert secret not in str(info.value) and info.value.status == 401


def test_api_key_with_a_line_break_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("ASTROVLM_API_KEY", "sk-first-half\nsk-second-half")
    with pytest.raises(AstroVLMError, match=r"\$ASTROVLM_API_KEY holds a space, a line break") as info:
        RemoteVLM("http://127.0.0.1:9/v1", "m")
    assert "half" not in str(info.value)


def _all_loggers_at_debug(caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "glue_astrovlm"):
        caplog.set_level(logging.DEBUG, logger=name)


def test_url_credentials_go_as_basic_auth_and_are_never_shown(chat_server, images, monkeypatch, caplog):
    monkeypatch.delenv("ASTROVLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _all_loggers_at_debug(caplog)
    user, password = "astro-user-q7x", "pw:s3cr3t@9z"
    quoted = "pw%3As3cr3t%409z"
    url = chat_server.url.replace("http://", f"http://{user}:{quoted}@")
    shown = []
    with RemoteVLM(url) as vlm:
        shown += [repr(vlm), vlm.name, vlm.url, vlm.base_url]
        results = vlm.ask(images[:2], "What is it?", max_new_tokens=2) + vlm.classify(images[0], ["a", "b"])
        shown += [str(r) for r in results] + [str(r.to_row()) for r in results]
        chat_server.die_after(chat_server.answered, "503")  # retries, then an error
        vlm.backoff = 0.01
        with pytest.raises(ServerRefused) as refused:
            vlm.ask(images[0], "What is it?")
        shown.append(str(refused.value))
    assert vlm.name == f"loop-model @ {chat_server.url}" and vlm.base_url == chat_server.url
    # a server that is gone: the connection error names the URL without the credentials
    with RemoteVLM(f"http://{user}:{quoted}@127.0.0.1:{_free_port()}/v1", "m", max_retries=0) as gone:
        with pytest.raises(AstroVLMError, match="Could not connect") as unreachable:
            gone.ask(images[0], "What is it?")
        shown += [str(unreachable.value), repr(gone)]
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    assert all(r[2].get("authorization") == expected for r in chat_server.requests)
    assert all(user not in r[1] for r in chat_server.requests)  # the request target holds no credentials
    assert any(r.name == "httpx" for r in caplog.records)
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    shown.append(caplog.text)
    for text in shown:
        for secret in (user, password, quoted, "s3cr3t", expected.split()[1]):
            assert secret not in text


def test_url_credentials_give_way_to_an_api_key(chat_server, images, monkeypatch, caplog):
    monkeypatch.setenv("ASTROVLM_API_KEY", "sk-own-key-123")
    _all_loggers_at_debug(caplog)
    url = chat_server.url.replace("http://", "http://astro-user-q7x:pw-s3cr3t-9z@")
    with RemoteVLM(url) as vlm:
        vlm.ask(images[0], "What is it?", max_new_tokens=2)
    assert {r[2].get("authorization") for r in chat_server.requests} == {"Bearer sk-own-key-123"}
    assert "user name and password in the URL" in caplog.text
    assert "astro-user-q7x" not in caplog.text and "s3cr3t" not in caplog.text


# ------------------------------------------------------------------------------ issue 9: malformed answers
def _answering(server, path, content, status=200, headers=None):
    """Make ``server`` answer every request to ``path`` with ``content`` (JSON-encoded unless bytes)."""
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()

    def respond(method, requested, body):
        return (status, headers or {}, raw) if requested == path else None

    server.respond = respond


def _one_clear_line(error, server):
    text = str(error)
    assert server.url in text and "\n" not in text and "Traceback" not in text
    return text


def _logprobs_answer(top):
    return {"choices": [{"message": {"content": "A"}, "logprobs": {"content": [{"token": "A", "logprob": -0.1,
                                                                                 "top_logprobs": top}]}}]}


_NOT_JSON = [b"<html><body>502 Bad Gateway</body></html>", b"[" * 100_000 + b"]" * 100_000,
             b"\xff\xfe\x00 not text", b""]


@pytest.mark.parametrize("content, problem", [
    (_NOT_JSON[0], "not JSON"),
    (_NOT_JSON[1], "not JSON"),
    (_NOT_JSON[2], "not JSON"),
    (_NOT_JSON[3], "not JSON"),
    ([], "no choices"),
    ({"choices": []}, "no choices"),
    ({"choices": None}, "no choices"),
    ({"error": {"message": "model overloaded"}}, "no choices.*model overloaded"),
    ({"choices": ["A"]}, "a choice that is not an object"),
    ({"choices": [{"message": "A"}]}, "a choice without a message object"),
    ({"choices": [{"text": "A"}]}, "a choice without a message object"),
    ({"choices": [{"message": {"content": 5}}]}, "content that is neither text nor null"),
    ({"choices": [{"message": {"content": {"text": "A"}}}]}, "content that is neither text nor null"),
    ({"choices": [{"message": {"content": [{"type": "image_url"}]}}]}, "content that is neither text"),
])
def test_malformed_chat_answer_gives_one_clear_line(chat_server, images, content, problem):
    _answering(chat_server, "/v1/chat/completions", content)
    with RemoteVLM(chat_server.url, max_retries=0) as vlm:
        with pytest.raises(AstroVLMError, match=problem) as info:
            vlm.ask(images[0], "What is it?")
    _one_clear_line(info.value, chat_server)
    assert info.value.results == []


@pytest.mark.parametrize("content, answer", [
    ({"choices": [{"message": {"content": None}}]}, ""),
    ({"choices": [{"message": {"content": [{"type": "text", "text": "a "},
                                           {"type": "text", "text": "galaxy"}]}}]}, "a galaxy"),
])
def test_null_or_parted_content_gives_a_sensible_answer(chat_server, images, content, answer):
    _answering(chat_server, "/v1/chat/completions", content)
    with RemoteVLM(chat_server.url, max_retries=0) as vlm:
        result, = vlm.ask(images[0], "What is it?")
    assert result.answer == answer and result.image_tokens is None


@pytest.mark.parametrize("usage", [{"prompt_tokens": "many"}, {"prompt_tokens": -5}, {"prompt_tokens": 1.5},
                                   {"prompt_tokens": True}, {"prompt_tokens": None}, "lots", [120], {},
                                   b"NaN", b"Infinity", b"1" + b"0" * 400])
def test_malformed_usage_leaves_image_tokens_empty(chat_server, images, usage):
    # usage is extra information: a bad one must not cost the answer
    if isinstance(usage, bytes):  # numbers that JSON has no words for, written as Python's json reads them
        raw = (b'{"choices": [{"message": {"content": "a galaxy"}}], "usage": {"prompt_tokens": ' + usage
               + b"}}")
    else:
        raw = json.dumps(chat_server.completion("a galaxy", usage=usage)).encode()
    _answering(chat_server, "/v1/chat/completions", raw)
    with RemoteVLM(chat_server.url, max_retries=0) as vlm:
        result, = vlm.ask(images[0], "What is it?")
    assert result.answer == "a galaxy" and result.image_tokens is None


@pytest.mark.parametrize("content, problem", [
    (_logprobs_answer([{"token": "A", "logprob": "abc"}]), r"entry 0 has logprob 'abc', not a number"),
    (_logprobs_answer([{"token": "B", "logprob": -1.0}, {"token": "A", "logprob": None}]),
     "entry 1 has logprob None"),
    (_logprobs_answer([{"token": "A", "logprob": "-0.1"}]), "entry 0 has logprob '-0.1'"),
    (_logprobs_answer([{"token": "A", "logprob": True}]), "entry 0 has logprob True"),
    (_logprobs_answer([{"token": "A"}]), "entry 0 has logprob None"),
    (_logprobs_answer([{"token": 5, "logprob": -0.1}]), r"entry 0 is not \{'token'"),
    (_logprobs_answer([{"logprob": -0.1}]), r"entry 0 is not \{'token'"),
    (_logprobs_answer(["A"]), r"entry 0 is not \{'token'"),
    (_logprobs_answer({"A": -0.1}), "top_logprobs that are not a list"),
    (_logprobs_answer("A"), "top_logprobs that are not a list"),
    ({"choices": [{"message": {"content": "A"}, "logprobs": "A"}]}, "logprobs that are not an object"),
    ({"choices": [{"message": {"content": "A"}, "logprobs": {"content": {"token": "A"}}}]},
     "logprobs.content that is not a list of objects"),
    ({"choices": [{"message": {"content": "A"}, "logprobs": {"content": [5]}}]},
     "logprobs.content that is not a list of objects"),
    (b'{"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "A", "logprob": NaN}]}]}}]}',
     "entry 0 has logprob nan"),
    (b'{"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "A", "logprob": Infinity}]}]}}]}',
     "entry 0 has logprob inf"),
])
def test_malformed_logprobs_give_one_clear_line(chat_server, images, content, problem):
    _answering(chat_server, "/v1/chat/completions", content)
    with RemoteVLM(chat_server.url, max_retries=0, classify_method="logprobs") as vlm:
        with pytest.raises(AstroVLMError, match=problem) as info:
            vlm.classify(images[0], ["round", "elongated"])
    _one_clear_line(info.value, chat_server)


def test_minus_infinity_logprob_is_probability_zero(chat_server, images):
    _answering(chat_server, "/v1/chat/completions",
               b'{"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "A", "logprob": -0.5}, '
               b'{"token": "B", "logprob": -Infinity}, {"token": "C", "logprob": -3.0}]}]}}]}')
    with RemoteVLM(chat_server.url, max_retries=0, classify_method="logprobs") as vlm:
        result, = vlm.classify(images[0], ["round", "elongated"])
    # A is 'elongated', B 'round' (canonical order); B counts as unlisted: C's log-probability minus ln 10
    expected = np.array([np.exp(-0.5), np.exp(-3.0) / 10])
    np.testing.assert_allclose([result.probabilities["elongated"], result.probabilities["round"]],
                               expected / expected.sum(), rtol=1e-12)


def _systemone_answer(probabilities):
    return {"answers": {"label": {"probabilities": probabilities}}, "usage": {"input_tokens": 10}}


@pytest.mark.parametrize("content, problem", [
    (_systemone_answer({"elongated": "0.7", "round": 0.3}), "probability for 'elongated' that is not a"),
    (_systemone_answer({"elongated": -0.2, "round": 1.2}), "probability for 'elongated' that is not a"),
    (_systemone_answer({"elongated": 0.5, "round": 1.5}), "probability for 'round' that is not a"),
    (_systemone_answer({"elongated": True, "round": 0.0}), "probability for 'elongated' that is not a"),
    (_systemone_answer({"elongated": 0.0, "round": 0.0}), "probability 0 for every label"),
    (_systemone_answer({"elongated": 1.0}), "no probability for the label 'round'"),
    (_systemone_answer([0.7, 0.3]), r"no probabilities \(answers.label.probabilities\)"),
    (_systemone_answer(None), r"no probabilities"),
    ({"answers": "elongated"}, r"no probabilities"),
    ({"usage": {"input_tokens": 10}}, r"no probabilities"),
    ([], r"no probabilities"),
    (b'{"answers": {"label": {"probabilities": {"elongated": NaN, "round": 0.5}}}}',
     "probability for 'elongated' that is not a"),
    (b"<html>oops</html>", "not JSON"),
])
def test_malformed_systemone_answer_gives_one_clear_line(chat_server, images, content, problem):
    _answering(chat_server, "/v1/systemone", content)
    with RemoteVLM(chat_server.url, max_retries=0, classify_method="systemone") as vlm:
        with pytest.raises(AstroVLMError, match=problem) as info:
            vlm.classify(images[0], ["round", "elongated"])
    _one_clear_line(info.value, chat_server)


@pytest.mark.parametrize("content, problem", [
    ({"data": {"id": "m"}}, "no list of models under 'data'"),
    ({"object": "list"}, "no list of models under 'data'"),
    ([{"id": "m"}], "no list of models under 'data'"),
    ({"data": [{"id": 5}]}, r"a model without a name \('id'\)"),
    ({"data": [{"id": None}]}, r"a model without a name"),
    ({"data": [{"id": " "}]}, r"a model without a name"),
    ({"data": ["m"]}, r"a model without a name"),
    (b"<html>login page</html>", "not JSON"),
])
def test_malformed_model_list_gives_one_clear_line(chat_server, content, problem):
    _answering(chat_server, "/v1/models", content)
    with pytest.raises(AstroVLMError, match=problem) as info:
        RemoteVLM(chat_server.url, max_retries=0)
    _one_clear_line(info.value, chat_server)


@pytest.mark.parametrize("declared", [True, False])
def test_enormous_answer_is_refused_without_reading_it_all(chat_server, images, declared):
    size = 17 * 2**20
    headers = {} if declared else {"Content-Length": None, "Connection": "close"}
    _answering(chat_server, "/v1/chat/completions", b" " * size, headers=headers)
    with RemoteVLM(chat_server.url, max_retries=2) as vlm:
        with pytest.raises(AstroVLMError, match="more than 16 MiB") as info:
            vlm.ask(images[0], "What is it?")
    _one_clear_line(info.value, chat_server)
    assert len(_scoring_requests(chat_server)) == 1  # not retried: the answer will not get smaller


def test_redirect_is_not_followed_and_shows_no_credentials(chat_server, images):
    _answering(chat_server, "/v1/chat/completions", b"", status=307,
               headers={"Location": "https://someone:hunter2@gpu.example.org/v1/chat/completions"})
    with RemoteVLM(chat_server.url, max_retries=0) as vlm:
        with pytest.raises(AstroVLMError, match=r"HTTP 307, a redirect to https://gpu.example.org/v1/chat/"
                                                r"completions; redirects are not followed") as info:
            vlm.ask(images[0], "What is it?")
    assert "hunter2" not in str(info.value) and "someone" not in str(info.value)


@pytest.mark.parametrize("retry_after", ["nan", "inf", "-3", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", ""])
def test_odd_retry_after_headers_still_retry(chat_server, images, retry_after):
    def respond(method, path, body):
        if path == "/v1/chat/completions" and len(_scoring_requests(chat_server)) == 1:
            return 503, {"Retry-After": retry_after}, b'{"detail": "warming up"}'
        return None

    chat_server.respond = respond
    began = time.monotonic()
    with RemoteVLM(chat_server.url, max_retries=1, backoff=0.05) as vlm:
        result, = vlm.ask(images[0], "What is it?")
    assert result.answer.startswith("answer") and len(_scoring_requests(chat_server)) == 2
    assert time.monotonic() - began < 3.0  # an unreadable, negative or past Retry-After means no extra wait


# ---------------------------------------------------------------------------- issue 9: other bad inputs
@pytest.mark.parametrize("option, values, message", [
    ("timeout", ["5", 0, -1.0, float("nan"), float("inf"), 1e10, True, None],
     "timeout must be a positive number of seconds up to 1e\\+06"),
    ("max_retries", ["3", 1.5, -1, None, True], "max_retries must be a whole number of at least 0"),
    ("concurrency", [0, "4", 2.5, 10**6, None], "concurrency must be a whole number from 1 to 256"),
    ("backoff", [-1, float("nan"), "x"], "backoff must be a non-negative number of seconds"),
    ("api_key_env", [None, "", "  ", 5], "api_key_env must name an environment variable"),
])
def test_option_of_wrong_type_or_value_says_what_is_wrong(option, values, message):
    for value in values:
        with pytest.raises(AstroVLMError, match=message):
            RemoteVLM("http://127.0.0.1:9/v1", "m", **{option: value})


def test_numpy_numbers_are_fine_options():
    with RemoteVLM("http://127.0.0.1:9/v1", "m", timeout=np.float32(2.5), max_retries=np.int64(1),
                   concurrency=np.int32(3), backoff=np.float64(0.0)) as vlm:
        assert (vlm.timeout, vlm.max_retries, vlm.concurrency, vlm.backoff) == (2.5, 1, 3, 0.0)
        assert type(vlm.max_retries) is int and type(vlm.concurrency) is int


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:9/v1?api-version=2024", "has a query string or fragment"),
    ("http://127.0.0.1:9/v1#models", "has a query string or fragment"),
    ("http://127.0.0.1:9/v1?", "has a query string or fragment"),
    ("http://::1:8000/v1", r"no valid host and port.*IPv6 address in brackets: http://\[::1\]:8000/v1"),
    ("http://[::1:8000/v1", "no valid host and port"),
    ("http://127.0.0.1:99999/v1", "no valid host and port"),
    ("http://127.0.0.1:port/v1", "no valid host and port"),
    ("http://127.0.0.1:0/v1", "no valid host and port"),
    ("http://gpu node:8000/v1", "contains spaces or control characters"),
    ("http://127.0.0.1:8000/v1\n", None),  # white space around the URL is trimmed
    ("http://127.0.0.1:8000/v1/chat/completions", "names an endpoint; pass the API root"),
    ("http://127.0.0.1:8000/v1/models/", "names an endpoint"),
    ("ftp://127.0.0.1/v1", "not an http"),
    ("http:///v1", "not an http"),
    ("", "not an http"),
])
def test_bad_server_urls_say_what_to_do(url, message):
    if message is None:
        with RemoteVLM(url, "m") as vlm:
            assert vlm.url == "http://127.0.0.1:8000/v1"
        return
    with pytest.raises(AstroVLMError, match=message):
        RemoteVLM(url, "m")


def test_query_string_is_never_shown(chat_server):
    with pytest.raises(AstroVLMError) as info:
        RemoteVLM(chat_server.url + "?key=sk-in-the-query-123", "m")
    assert "sk-in-the-query" not in str(info.value) and chat_server.url in str(info.value)
    assert chat_server.requests == []


def test_ipv6_loopback_server(ipv6_chat_server, images, caplog):
    _all_loggers_at_debug(caplog)
    url = ipv6_chat_server.url
    assert url.startswith("http://[::1]:")
    with RemoteVLM(url, concurrency=2) as vlm:
        results = vlm.ask(images, "What is it?", max_new_tokens=2)
        assert vlm.name == f"loop-model @ {url}"
    assert [r.provenance.bbox for r in results] == [_bbox(a.shape) for a in images]
    # with credentials too: the brackets stay, the credentials go
    with RemoteVLM(url.replace("http://", "http://astro-user-q7x:pw-s3cr3t-9z@")) as vlm:
        vlm.ask(images[0], "What is it?", max_new_tokens=2)
        assert vlm.url == url and "s3cr3t" not in caplog.text and "astro-user-q7x" not in caplog.text
    assert ipv6_chat_server.requests[-1][2]["authorization"].startswith("Basic ")


def test_closed_model_says_to_load_it_again(chat_server, images):
    vlm = RemoteVLM(chat_server.url)
    vlm.close()
    with pytest.raises(AstroVLMError, match=r"was closed; load it again") as info:
        vlm.ask(images[0], "What is it?")
    assert info.value.results == []


@pytest.mark.parametrize("max_new_tokens", [0, -3, "many", 2.5, None])
def test_bad_max_new_tokens_says_what_is_wrong(chat_server, images, max_new_tokens):
    with RemoteVLM(chat_server.url) as vlm:
        with pytest.raises(AstroVLMError, match="max_new_tokens must be a positive whole number"):
            vlm.ask(images[0], "What is it?", max_new_tokens=max_new_tokens)
    assert _scoring_requests(chat_server) == []


def test_environment_proxy_is_followed_but_never_for_loopback(chat_server, images, monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # the loopback chat server acts as the proxy for a GPU node name that does not resolve
    proxy = chat_server.url[:-len("/v1")]
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    with RemoteVLM("http://gpu-node.invalid:8000/v1", timeout=5) as vlm:
        result, = vlm.ask(images[0], "What is it?", max_new_tokens=2)
        assert vlm.name == "loop-model @ http://gpu-node.invalid:8000/v1" and result.answer
    assert [r[2]["host"] for r in chat_server.requests] == ["gpu-node.invalid:8000"] * 2
    # a loopback server is reached directly, even with a proxy (here a dead one) in the environment
    dead = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("http_proxy", dead)
    monkeypatch.setenv("HTTP_PROXY", dead)
    with RemoteVLM(chat_server.url, max_retries=0) as vlm:
        vlm.ask(images[0], "What is it?", max_new_tokens=2)
    # NO_PROXY sends a host past the proxy (to a closed port here: the error names it, not the proxy)
    monkeypatch.setenv("no_proxy", "gpu-node.invalid")
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    before = len(chat_server.requests)
    with pytest.raises(AstroVLMError, match="Could not connect to the server at http://gpu-node.invalid"):
        RemoteVLM("http://gpu-node.invalid:8000/v1", timeout=5, max_retries=0)
    assert len(chat_server.requests) == before


def test_a_survey_catalogue_runs_on_the_server_as_classify_does(served, remote, fits_dir, tmp_path):
    """Issue 15: the survey stage scores through the remote backend; rows equal classify's of the same
    cutouts, and a row outside its image is recorded, not sent."""
    from glue_astrovlm import cutouts_from_catalog, open_image
    from glue_astrovlm.catalogs import read_table
    from glue_astrovlm.survey import tag_catalog

    from ..survey_helpers import make_survey

    catalog, _ = make_survey(tmp_path / "survey", fits_dir)
    table = read_table(catalog)[:9]  # eight rows on one image and the row outside it
    run = tag_catalog(table, tmp_path / "tags", model=served["url"], labels=["FRI", "FRII"], size=32,
                      root=catalog.parent, load_options={"concurrency": 2}, progress=False)
    assert run.complete and (run.done, run.failed) == (8, 1)
    tags = run.table()
    with open_image(tags["source"][0]) as image:
        expected = remote.classify(cutouts_from_catalog(image, tags["source_id", "ra", "dec"], size=32,
                                                        id_col="source_id"), ["FRI", "FRII"])
    assert list(tags["label"]) == [r.label for r in expected]
    assert np.allclose(tags["p_FRI"], [r.probabilities["FRI"] for r in expected], atol=1e-6)
    assert set(tags["model"]) == {expected[0].model}
