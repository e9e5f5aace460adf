"""The remote backend: a VLM served by vLLM, SGLang or ``transformers serve`` over the OpenAI API.

Images travel as base64 PNG data URLs in ``POST {base_url}/chat/completions``. Classification is
*scored*, never parsed from generated text, in one of two ways:

``systemone``
    ``POST {base_url}/systemone``, the typed-decision endpoint of ``transformers serve``. The server
    reads the next-token logits of the option letters after the prompt and returns one probability per
    option.
``logprobs``
    For vLLM and SGLang: a chat completion of one token with ``logprobs=True, top_logprobs=20``; the
    probability of each option is the softmax over the log-probabilities of the option letters (see
    `letter_probabilities`).

Both send the same text with the image (`lettered_prompt`): the label set's question, the options
lettered ``A.``, ``B.``, ... in the canonical order of `~glue_astrovlm.labelsets.classification_prompt`
(so that permuting the labels only permutes the probabilities), and the instruction to answer with a
letter. That text, not ``LabelSet.prompt()``, is what `Result.prompt` and ``prompt_hash`` record.

Requests run ``concurrency`` at a time, each with a time limit, and are retried with exponential
back-off on connection errors, time-outs, HTTP 429 and 5xx (never on other 4xx). The API key is read
from the environment and sent as ``Authorization: Bearer``; it never appears in `repr`, names,
results, log records or error messages.
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import logging
import math
import os
import string
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from ..errors import AstroVLMError
from ..labelsets import LabelSet
from ..results import Result
from .base import VLM, ModelImage, OperationCancelled, ProgressCallback, classification_result, text_result

__all__ = ["RemoteVLM", "ServerRefused", "CLASSIFY_METHODS", "lettered_prompt", "letter_probabilities",
           "canonical_order"]

log = logging.getLogger("glue_astrovlm")

#: Values of ``classify_method``: ``'auto'`` tries the others in this order and keeps the first that works.
CLASSIFY_METHODS = ("auto", "systemone", "logprobs")

#: Option letters; a label set for a remote model has at most this many labels.
LETTERS = string.ascii_uppercase

#: How many alternatives a ``logprobs`` request asks for (the OpenAI API's maximum, vLLM's default cap).
TOP_LOGPROBS = 20

#: Log-probability margin (natural log, ~2.3) below the least likely listed token that an option letter
#: missing from the top-``TOP_LOGPROBS`` list is given: it is at most as likely as that token, and is
#: taken to be ten times less likely.
MISSING_LOGPROB_MARGIN = math.log(10.0)

#: Placeholder for the image in a System One request.
IMAGE_PLACEHOLDER = "<img-1>"

_IDEFICS3_HINT = ("For SmolVLM/Idefics3 models, start `transformers serve` with --decision-config FILE, "
                  'where FILE holds {"sanitize_control_tokens": false}.')
_RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
_MAX_BACKOFF = 30.0


class ServerRefused(AstroVLMError):
    """The server answered a request with an HTTP error; ``status`` and ``detail`` say which."""

    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status = status
        self.detail = detail


class _MethodUnavailable(AstroVLMError):
    """A classification method that this server does not offer (``auto`` then tries the next one)."""


class _Cancelled(Exception):
    """``cancel`` was set while waiting to retry a request."""


# ---------------------------------------------------------------------------------------------- prompt
def canonical_order(label_set: LabelSet) -> list[int]:
    """Indices of ``label_set.labels`` in the canonical (case-insensitive alphabetical) option order.

    The same order as `~glue_astrovlm.labelsets.classification_prompt`, so that the prompt, and with it
    every probability, does not depend on the order in which the labels were typed.
    """
    return sorted(range(len(label_set)), key=lambda i: (label_set.labels[i].casefold(), label_set.labels[i]))


def lettered_prompt(label_set: LabelSet) -> str:
    """The text sent with each image for remote classification.

    The question, a blank line, one line per option (``A. FRI: description``) in `canonical_order`,
    and ``Answer with the letter of the option that fits best (A to D) only.`` This is exactly the
    generic decision prompt of ``transformers serve``'s ``/v1/systemone`` endpoint, so both classify
    methods show the model the same text.

    Parameters
    ----------
    label_set : LabelSet
        At most 26 labels.

    Returns
    -------
    str
    """
    if len(label_set) > len(LETTERS):
        raise AstroVLMError(f"A remote model scores at most {len(LETTERS)} labels (one letter each); this "
                            f"label set has {len(label_set)}. Split it into smaller sets.")
    lines = []
    for letter, index in zip(LETTERS, canonical_order(label_set)):
        label, description = label_set.labels[index], label_set.descriptions[index]
        lines.append(f"{letter}. {label}: {description}" if description else f"{letter}. {label}")
    last = LETTERS[len(label_set) - 1]
    return (f"{label_set.question.strip()}\n\n" + "\n".join(lines)
            + f"\nAnswer with the letter of the option that fits best (A to {last}) only.")


def letter_probabilities(top_logprobs: Sequence[dict], n_options: int) -> tuple[list[float], int]:
    """Probabilities of the option letters ``A``, ``B``, ... from one token's top log-probabilities.

    Parameters
    ----------
    top_logprobs : sequence of dict
        The ``top_logprobs`` of the first generated token, as vLLM and SGLang return them:
        ``[{"token": " A", "logprob": -0.3}, ...]``.
    n_options : int
        Number of options; letters ``A`` to ``LETTERS[n_options - 1]`` are read.

    Returns
    -------
    probabilities : list of float
        One per letter, in letter order, summing to 1.
    found : int
        How many letters were in the list. Tokens that are a letter once surrounding white space and a
        trailing ``.`` or ``)`` are removed count for that letter (several such tokens add up). A letter
        not in the list gets the smallest listed log-probability minus `MISSING_LOGPROB_MARGIN`: an
        unlisted token is at most as likely as the least likely listed one. With no letter in the list,
        every option gets the same probability.
    """
    letters = tuple(LETTERS[:n_options])
    found: dict[str, float] = {}
    listed = []
    for entry in top_logprobs:
        logprob = float(entry.get("logprob", -math.inf))
        if not math.isfinite(logprob):
            continue
        listed.append(logprob)
        token = str(entry.get("token", "")).strip().rstrip(".)").strip()
        if token in letters:
            found[token] = float(_logaddexp(found[token], logprob)) if token in found else logprob
    if not found:
        return [1.0 / n_options] * n_options, 0
    floor = min(listed) - MISSING_LOGPROB_MARGIN
    logprobs = [found.get(letter, floor) for letter in letters]
    top = max(logprobs)
    weights = [math.exp(value - top) for value in logprobs]
    total = sum(weights)
    return [weight / total for weight in weights], len(found)


def _logaddexp(a: float, b: float) -> float:
    top = max(a, b)
    return top + math.log(math.exp(a - top) + math.exp(b - top))


def _tries(count: int) -> str:
    return f"{count} {'try' if count == 1 else 'tries'}"


def _png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------- URLs
def _public_url(url: str) -> str:
    """``url`` without user name or password (they may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _is_loopback(host: str | None) -> bool:
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- backend
class RemoteVLM(VLM):
    """A vision-language model behind an OpenAI-compatible server (vLLM, SGLang, ``transformers serve``).

    Parameters
    ----------
    base_url : str
        The server's API root, e.g. ``'http://127.0.0.1:8000/v1'``; ``/v1`` is added to a URL with no
        path.
    model : str, optional
        The served model's name, as the server lists it at ``GET /models``. By default the server is
        asked: with one model, that one is used; with none listed (``transformers serve`` 5.23 lists
        its cache, not the model pinned on its command line; 5.24 lists the pinned model), requests name
        no model and the server's own model answers; with several, this raises `AstroVLMError` listing
        them.
    api_key_env : str, optional
        Environment variable holding the API key (falls back to ``OPENAI_API_KEY``); sent as
        ``Authorization: Bearer``. Without a key, requests carry no authorisation.
    timeout : float, optional
        Seconds to wait for the server to connect and to answer each request.
    max_retries : int, optional
        Retries after the first try of a request that failed to connect, timed out, or got HTTP 429 or
        5xx; waits 0.5 s, 1 s, 2 s, ... between tries (or the server's ``Retry-After``, at most 30 s).
    concurrency : int, optional
        Requests in flight at once when several images are sent.
    classify_method : {'auto', 'systemone', 'logprobs'}, optional
        How labels are scored (see the module docstring). ``'auto'`` tries ``systemone`` then
        ``logprobs`` on the first image and keeps the first that works.
    backoff : float, optional
        Seconds before the first retry; doubled for every further one.

    Attributes
    ----------
    name : str
        ``'<model> @ <url>'``: what `Result.model` records (never the API key).
    classify_method : str
        The method asked for; `resolved_classify_method` is the one in use once ``'auto'`` has chosen.

    Notes
    -----
    ``image_tokens`` in results is the prompt length the server reports (image plus text tokens), an
    upper bound on the image tokens: servers do not report image tokens separately.

    When a request fails for good, no further requests are sent, and the `AstroVLMError` raised carries
    the results that did finish, in input order, as its ``results`` attribute.

    ``transformers serve`` 5.23 cannot build /v1/systemone prompts with images for SmolVLM (Idefics3)
    processors unless it is started with ``--decision-config FILE``, ``FILE`` holding
    ``{"sanitize_control_tokens": false}``; the error message says so when it happens.

    Examples
    --------
    >>> vlm = RemoteVLM("http://127.0.0.1:8000/v1")  # doctest: +SKIP
    >>> vlm.classify(cutouts, preset="radio-morphology", progress=print)  # doctest: +SKIP
    """

    def __init__(self, base_url: str, model: str | None = None, *, api_key_env: str = "ASTROVLM_API_KEY",
                 timeout: float = 60.0, max_retries: int = 3, concurrency: int = 4,
                 classify_method: str = "auto", backoff: float = 0.5):
        try:
            import httpx
        except ImportError as error:
            raise AstroVLMError("Remote models need httpx: pip install 'glue-astrovlm[remote]'.") from error

        base_url = str(base_url).strip().rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AstroVLMError(f"Server URL {_public_url(base_url)!r} is not an http(s) URL; "
                                "pass e.g. http://127.0.0.1:8000/v1.")
        if parts.path in ("", "/"):
            base_url += "/v1"
        if classify_method not in CLASSIFY_METHODS:
            raise AstroVLMError(f"classify_method must be one of {', '.join(CLASSIFY_METHODS)}, "
                                f"got {classify_method!r}.")
        if not timeout or timeout <= 0:
            raise AstroVLMError(f"The timeout must be a positive number of seconds, got {timeout!r}.")
        if int(max_retries) < 0:
            raise AstroVLMError(f"max_retries must be 0 or more, got {max_retries!r}.")
        if int(concurrency) < 1:
            raise AstroVLMError(f"concurrency must be at least 1, got {concurrency!r}.")

        self.base_url = base_url
        self.url = _public_url(base_url)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.classify_method = classify_method
        self.backoff = float(backoff)
        self.api_key_env = api_key_env
        self.adapter = None
        self._resolved_method: str | None = None if classify_method == "auto" else classify_method
        self._method_lock = threading.Lock()

        key = os.environ.get(api_key_env) or os.environ.get("OPENAI_API_KEY") or ""
        self._secret = key.strip()
        headers = {"Accept": "application/json"}
        if self._secret:
            headers["Authorization"] = f"Bearer {self._secret}"
            if parts.scheme == "http" and not _is_loopback(parts.hostname):
                log.warning("The API key is sent unencrypted over http to %s; use https or an SSH tunnel.",
                            parts.hostname)
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            headers=headers,
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )

        self.model = model if model is None else str(model)
        if self.model is None:
            try:
                self.model = self._served_model()
            except BaseException:
                self._client.close()
                raise
        self.name = f"{self.model} @ {self.url}" if self.model else f"{self.url} (the server's model)"
        log.info("Remote model %s: timeout %g s, %d retries, %d requests at once, classify method %s",
                 self.name, self.timeout, self.max_retries, self.concurrency, self.classify_method)

    # ------------------------------------------------------------------ lifecycle
    @property
    def resolved_classify_method(self) -> str | None:
        """The classify method in use: ``classify_method``, or what ``'auto'`` chose (`None` before)."""
        return self._resolved_method

    def close(self) -> None:
        """Close the connections to the server."""
        self._client.close()

    def __enter__(self) -> "RemoteVLM":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP
    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _detail(self, response) -> str:
        try:
            data = response.json()
        except ValueError:
            detail = response.text
        else:
            detail = data
            if isinstance(data, dict):
                detail = data.get("detail") or data.get("error") or data.get("message") or data
                if isinstance(detail, dict):
                    detail = detail.get("message") or detail
        detail = self._redact(" ".join(str(detail).split()))
        return detail[:500] + ("..." if len(detail) > 500 else "")

    def _retry_delay(self, attempt: int, response=None) -> float:
        delay = self.backoff * 2 ** (attempt - 1)
        if response is not None:
            try:
                delay = max(delay, float(response.headers.get("Retry-After", "")))
            except ValueError:
                pass
        return min(delay, _MAX_BACKOFF)

    def _request(self, method: str, path: str, body: dict | None = None, cancel=None) -> Any:
        """Send one request with retries; return the decoded JSON answer.

        Raises `AstroVLMError` when the server cannot be reached or does not answer in time after all
        tries, `ServerRefused` on an HTTP error, and `_Cancelled` when ``cancel`` is set during a wait.
        """
        import httpx

        url = f"{self.base_url}{path}"
        shown = f"{self.url}{path}"
        tries = self.max_retries + 1
        failure: tuple[str, Any] = ("", None)
        for attempt in range(tries):
            if attempt:
                delay = self._retry_delay(attempt, failure[1] if failure[0] == "status" else None)
                log.debug("Retrying %s %s in %.1f s (try %d of %d) after %s", method, shown, delay,
                          attempt + 1, tries, failure[0])
                if cancel is not None:
                    if cancel.wait(delay):
                        raise _Cancelled()
                else:
                    time.sleep(delay)
            try:
                response = self._client.request(method, url, json=body)
            except httpx.TimeoutException as error:
                failure = ("timeout", error)
                continue
            except httpx.TransportError as error:
                failure = ("connection", error)
                continue
            if response.status_code in _RETRY_STATUSES:
                failure = ("status", response)
                continue
            if response.status_code >= 400:
                raise self._refused(method, shown, response, tries=1)
            try:
                return response.json()
            except ValueError:
                raise AstroVLMError(f"The server at {shown} answered HTTP {response.status_code} with "
                                    "something that is not JSON; check that the URL points at an "
                                    "OpenAI-compatible API (it usually ends in /v1).") from None
        kind, cause = failure
        if kind == "timeout":
            raise AstroVLMError(
                f"The server at {self.url} did not answer within {self.timeout:g} s after {_tries(tries)} "
                f"({type(cause).__name__} on {method} {path}). Check that it is running and not overloaded; "
                "a large model or a slow GPU may need a longer limit (--timeout / timeout=).") from None
        if kind == "connection":
            raise AstroVLMError(
                f"Could not connect to the server at {self.url} after {_tries(tries)} "
                f"({type(cause).__name__}: {self._redact(str(cause)) or 'no answer'}). Check that the server "
                "is running, that host and port are right, and, for a server on a cluster node, that the SSH "
                "tunnel is open (ssh -N -L 8000:NODE:8000 LOGIN-HOST).") from None
        raise self._refused(method, shown, cause, tries=tries)

    def _refused(self, method: str, shown: str, response, tries: int) -> ServerRefused:
        status, detail = response.status_code, self._detail(response)
        after = f" after {_tries(tries)}" if tries > 1 else ""
        message = f"The server at {shown} answered {method} with HTTP {status}{after}: {detail}"
        if status in (401, 403):
            where = (f"the key in ${self.api_key_env} (or $OPENAI_API_KEY)" if self._secret
                     else f"no key (${self.api_key_env} and $OPENAI_API_KEY are unset)")
            message += (f". The server wants an API key and this request sent {where}; set "
                        f"{self.api_key_env} to the key the server was started with (e.g. vLLM --api-key).")
        elif status == 429:
            message += ". The server is rate-limiting; lower --concurrency or try again later."
        elif status == 404:
            message += (f". Check the URL (it usually ends in /v1) and the model name ({self.url}/models "
                        "lists the served models).")
        elif status >= 500:
            message += ". The server failed; see its log."
        return ServerRefused(message, status, detail)

    def _served_model(self) -> str | None:
        try:
            data = self._request("GET", "/models")
        except ServerRefused as error:
            if error.status in (401, 403):
                raise
            log.info("%s does not list its models (HTTP %d); requests name no model.", self.url, error.status)
            return None
        entries = data.get("data", []) if isinstance(data, dict) else []
        names = [str(entry.get("id")) for entry in entries if isinstance(entry, dict) and entry.get("id")]
        if len(names) == 1:
            return names[0]
        if not names:
            log.info("%s lists no models; requests name none, so the server's pinned model answers.",
                     self.url)
            return None
        raise AstroVLMError(f"The server at {self.url} serves {len(names)} models: {', '.join(names)}. "
                            "Choose one by passing its name as the model "
                            "(load_model(url, served_model=NAME)).")

    def _body(self, **fields) -> dict:
        return ({"model": self.model} if self.model else {}) | fields

    def _chat(self, image_b64: str, prompt: str, cancel, **options) -> dict:
        content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_b64}"}},
                   {"type": "text", "text": prompt}]
        body = self._body(messages=[{"role": "user", "content": content}], temperature=0, stream=False,
                          **options)
        data = self._request("POST", "/chat/completions", body, cancel)
        try:
            data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise AstroVLMError(f"The server at {self.url} answered a chat completion without choices: "
                                f"{self._redact(str(data))[:300]}") from None
        return data

    @staticmethod
    def _prompt_tokens(data: dict, key: str = "prompt_tokens") -> int | None:
        usage = data.get("usage") if isinstance(data, dict) else None
        value = usage.get(key) if isinstance(usage, dict) else None
        return int(value) if isinstance(value, (int, float)) else None

    # ------------------------------------------------------------------ running many requests
    def _run(self, images: Sequence[ModelImage], one: Callable[[ModelImage], Result],
             progress: ProgressCallback | None, cancel, first: Result | None = None) -> list[Result]:
        """Call ``one`` for each image, ``concurrency`` at a time; results in input order.

        ``first`` is an already finished result for ``images[0]``. Each request checks ``cancel`` before it
        is sent; if any image was skipped, `OperationCancelled` carries the finished results in order. If a
        request fails, no further requests are sent and the error is raised with the finished results as
        its ``results`` attribute.
        """
        total = len(images)
        results: list[Result | None] = [None] * total
        done = 0
        if first is not None:
            results[0] = first
            done = 1
            if progress is not None:
                progress(done, total)
        stop = threading.Event()

        def task(index: int) -> Result | None:
            if stop.is_set() or (cancel is not None and cancel.is_set()):
                return None
            try:
                return one(images[index])
            except _Cancelled:
                return None

        failure: BaseException | None = None
        pending = iter([i for i in range(total) if results[i] is None])
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="astrovlm-remote") as pool:
            in_flight: dict = {}

            def submit_more() -> None:
                # here, after each progress call, so that a cancel set there stops the next request
                while len(in_flight) < self.concurrency and not stop.is_set():
                    if cancel is not None and cancel.is_set():
                        return
                    index = next(pending, None)
                    if index is None:
                        return
                    in_flight[pool.submit(task, index)] = index

            try:
                submit_more()
                while in_flight:
                    finished_now, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished_now:
                        index = in_flight.pop(future)
                        try:
                            result = future.result()
                        except Exception as error:  # noqa: BLE001 - the first failure is raised below
                            stop.set()
                            failure = failure or error
                            continue
                        if result is None:
                            continue
                        results[index] = result
                        done += 1
                        if progress is not None:
                            progress(done, total)
                    submit_more()
            except BaseException:
                stop.set()  # e.g. KeyboardInterrupt or a failing progress callback: send nothing more
                raise
        finished = [result for result in results if result is not None]
        if failure is not None:
            if isinstance(failure, AstroVLMError) and not isinstance(failure, OperationCancelled):
                failure.results = finished
            raise failure
        if len(finished) < total:
            raise OperationCancelled(finished)
        return finished

    # ------------------------------------------------------------------ ask / describe
    def _generate(self, images: list[ModelImage], prompt: str, task: str, max_new_tokens: int,
                  progress, cancel) -> list[Result]:
        def one(model_image: ModelImage) -> Result:
            data = self._chat(_png_base64(model_image.image), prompt, cancel, max_tokens=int(max_new_tokens))
            answer = (data["choices"][0].get("message") or {}).get("content") or ""
            return text_result(model_image, task, prompt, answer, self.name, None, self._prompt_tokens(data))

        return self._run(images, one, progress, cancel)

    # ------------------------------------------------------------------ classify
    def _classify(self, images: list[ModelImage], label_set: LabelSet, progress, cancel) -> list[Result]:
        prompt = lettered_prompt(label_set)
        order = canonical_order(label_set)
        first = None
        if self._resolved_method is None:
            with self._method_lock:
                if self._resolved_method is None:
                    if cancel is not None and cancel.is_set():
                        raise OperationCancelled([])
                    try:
                        first = self._classify_auto(images[0], label_set, prompt, order, cancel)
                    except _Cancelled:
                        raise OperationCancelled([]) from None

        def one(model_image: ModelImage) -> Result:
            return self._classify_one(model_image, label_set, prompt, order, self._resolved_method, cancel)

        return self._run(images, one, progress, cancel, first)

    def _classify_auto(self, model_image, label_set, prompt, order, cancel) -> Result:
        reasons = []
        for method in CLASSIFY_METHODS[1:]:
            try:
                result = self._classify_one(model_image, label_set, prompt, order, method, cancel)
            except (_MethodUnavailable, ServerRefused) as error:
                if isinstance(error, ServerRefused) and error.status in (401, 403, 429):
                    raise
                reasons.append(f"[{method}] {error}")
                log.info("Classify method %s does not work with %s: %s", method, self.url, error)
                continue
            self._resolved_method = method
            log.info("Classifying with %s through %s", self.name, method)
            return result
        raise AstroVLMError(f"The server at {self.url} cannot score labels. " + " ".join(reasons)
                            + " Serve the model with vLLM or SGLang (log-probabilities) or with "
                            "`transformers serve` (its /v1/systemone endpoint).")

    def _classify_one(self, model_image: ModelImage, label_set: LabelSet, prompt: str, order: list[int],
                      method: str, cancel) -> Result:
        image_b64 = _png_base64(model_image.image)
        if method == "systemone":
            lettered, tokens = self._systemone(image_b64, label_set, order, cancel)
        else:
            lettered, tokens = self._logprobs(image_b64, prompt, len(label_set), cancel)
        probabilities = [0.0] * len(label_set)
        for probability, index in zip(lettered, order):
            probabilities[index] = probability
        result = classification_result(model_image, label_set, probabilities, self.name, None, tokens)
        return replace(result, prompt=prompt, prompt_hash=hashlib.sha256(prompt.encode()).hexdigest()[:12])

    def _systemone(self, image_b64: str, label_set: LabelSet, order: list[int],
                   cancel) -> tuple[list[float], int | None]:
        """Option probabilities in canonical order from ``/v1/systemone``, and the prompt tokens."""
        criteria = {label_set.labels[i]: (label_set.descriptions[i] or None) for i in order}
        body = self._body(
            state=f"{IMAGE_PLACEHOLDER}\n{label_set.question.strip()}",
            questions={"label": {"type": "choice", "criteria": criteria}},
            assets={IMAGE_PLACEHOLDER: {"type": "image", "format": "png", "data_base64": image_b64}},
        )
        try:
            data = self._request("POST", "/systemone", body, cancel)
        except ServerRefused as error:
            if error.status in (404, 405):
                raise _MethodUnavailable(f"{self.url} has no /systemone endpoint (only `transformers serve` "
                                         "has one); use classify_method='logprobs' for vLLM or SGLang."
                                         ) from None
            if "char_to_token" in error.detail:  # transformers 5.23, Idefics3 processors (SmolVLM)
                raise ServerRefused(f"{error} {_IDEFICS3_HINT}", error.status, error.detail) from None
            raise
        try:
            by_label = data["answers"]["label"]["probabilities"]
            lettered = [float(by_label[label_set.labels[i]]) for i in order]
        except (KeyError, TypeError, ValueError):
            raise AstroVLMError(f"The server at {self.url} answered /systemone without a probability for "
                                f"every label: {self._redact(str(data))[:300]}") from None
        return lettered, self._prompt_tokens(data, "input_tokens")

    def _logprobs(self, image_b64: str, prompt: str, n_options: int,
                  cancel) -> tuple[list[float], int | None]:
        """Option probabilities in letter order from the top log-probabilities of one generated token."""
        data = self._chat(image_b64, prompt, cancel, max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
        choice = data["choices"][0]
        content = (choice.get("logprobs") or {}).get("content") if isinstance(choice, dict) else None
        top = content[0].get("top_logprobs") if content and isinstance(content[0], dict) else None
        if not top:
            raise _MethodUnavailable(f"{self.url} returned no log-probabilities (`transformers serve` "
                                     "ignores `logprobs`); use classify_method='systemone' there, or a vLLM "
                                     "or SGLang server.")
        probabilities, found = letter_probabilities(top, n_options)
        if not found:
            log.warning("No option letter among the %d most likely first tokens of %s; every label gets "
                        "probability 1/%d for this image.", len(top), self.name, n_options)
        return probabilities, self._prompt_tokens(data)
