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

Requests run ``concurrency`` at a time. Each has one time limit for all of it (connecting, sending, and
reading the whole answer), and is retried with exponential back-off on connection errors, time-outs,
HTTP 429 and 5xx (never on other 4xx). Every answer is checked before it is used: a malformed one
raises `AstroVLMError` naming the server and what was wrong.

Credentials go only where they belong. The key in ``$ASTROVLM_API_KEY`` (or the variable named by
``api_key_env``) is sent to the server the URL names; ``$OPENAI_API_KEY`` only to OpenAI's own API
(``https://api.openai.com``). A user name and password in the URL are sent as HTTP Basic auth when no key
is. None of them ever appears in `repr`, names, results, log records (httpx's included) or error
messages.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import io
import ipaddress
import json
import logging
import math
import numbers
import os
import reprlib
import string
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

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

#: Largest answer read from a server, in bytes; a chat completion or a model list is far smaller.
MAX_ANSWER_BYTES = 16 * 2**20

#: Most requests in flight at once; more gain nothing from one server.
MAX_CONCURRENCY = 256

#: Longest ``timeout`` or ``backoff`` in seconds (about 11 days; sockets cannot wait much longer).
MAX_SECONDS = 1e6

#: The only host that ``$OPENAI_API_KEY`` is sent to (over https).
OPENAI_API_HOST = "api.openai.com"

_IDEFICS3_HINT = ("For SmolVLM/Idefics3 models, start `transformers serve` with --decision-config FILE, "
                  'where FILE holds {"sanitize_control_tokens": false}.')
_RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
_MAX_BACKOFF = 30.0
_ENDPOINTS = ("/chat/completions", "/completions", "/models", "/systemone")


class ServerRefused(AstroVLMError):
    """The server answered a request with an HTTP error; ``status`` and ``detail`` say which."""

    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status = status
        self.detail = detail


class _MethodUnavailable(AstroVLMError):
    """A classification method that this server does not offer (``auto`` then tries the next one)."""


class _Cancelled(Exception):
    """``cancel`` was set, or another request of the run failed for good, while waiting to retry."""


class _Abort:
    """Set when the user cancels (``cancel``) or another request of the run failed for good (``stop``)."""

    def __init__(self, cancel, stop: threading.Event):
        self._cancel = cancel
        self._stop = stop

    def is_set(self) -> bool:
        return self._stop.is_set() or (self._cancel is not None and self._cancel.is_set())

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True as soon as either event is set (``cancel`` is polled)."""
        end = time.monotonic() + seconds
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._stop.wait(min(left, 0.05))
        return True


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

    Raises
    ------
    ValueError
        Naming the first entry that is not ``{"token": str, "logprob": number}`` or whose log-probability
        is NaN or +inf (``-inf``, probability 0, is allowed).
    """
    letters = tuple(LETTERS[:n_options])
    found: dict[str, float] = {}
    listed = []
    for number, entry in enumerate(top_logprobs):
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            raise ValueError(f"entry {number} is not {{'token': text, 'logprob': number}} but "
                             f"{_excerpt(entry)}")
        logprob = _real(entry.get("logprob"), allow_infinite=True)
        if logprob is None or math.isnan(logprob) or logprob == math.inf:
            raise ValueError(f"entry {number} has logprob {_excerpt(entry.get('logprob'))}, not a number "
                             "from -inf to 0")
        if logprob == -math.inf:  # probability 0
            continue
        listed.append(logprob)
        token = entry["token"].strip().rstrip(".)").strip()
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


# ---------------------------------------------------------------------------------------------- values
_SHORT = reprlib.Repr()  # for a value in an error message: short, and safe for any nesting
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 3, 60, 60, 4, 4
_DETAIL = reprlib.Repr()  # for a server's own error detail (e.g. a list of validation errors)
_DETAIL.maxlevel, _DETAIL.maxstring, _DETAIL.maxother, _DETAIL.maxlist, _DETAIL.maxdict = 5, 300, 100, 8, 8


def _excerpt(value: Any) -> str:
    """A short, depth-limited repr of a value from a server's answer (safe for any nesting)."""
    return _SHORT.repr(value)[:200]


def _real(value: Any, allow_infinite: bool = False) -> float | None:
    """``value`` as a float if it is a JSON number (not a bool, not NaN or infinite unless allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer beyond the float range
        return None
    return value if allow_infinite or math.isfinite(value) else None


def _count(name: str, value: Any, least: int, most: int | None = None) -> int:
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least
            or (most is not None and value > most)):
        limits = f"from {least} to {most}" if most is not None else f"of at least {least}"
        raise AstroVLMError(f"{name} must be a whole number {limits}, got {value!r}.")
    return int(value)


def _seconds(name: str, value: Any, positive: bool) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value < 0 or (positive and value == 0) or value > MAX_SECONDS):
        kind = "positive" if positive else "non-negative"
        raise AstroVLMError(f"{name} must be a {kind} number of seconds up to {MAX_SECONDS:.0e}, "
                            f"got {value!r}.")
    return float(value)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date); None when unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _keep_results(error: BaseException, results: list[Result]) -> None:
    """Attach the finished results to ``error`` as ``error.results``, unless it already has some."""
    if not isinstance(getattr(error, "results", None), list):
        try:
            error.results = results
        except AttributeError:  # an exception type that takes no attributes
            pass


# ---------------------------------------------------------------------------------------------- URLs
def _public_url(url: str) -> str:
    """``url`` without user name, password, query or fragment (they may hold a secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unreadable URL)"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _is_loopback(host: str | None) -> bool:
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_url(base_url: Any) -> tuple[str, str, str, str, str]:
    """Check a server URL; return its API root without credentials, scheme, host, user name and password.

    ``/v1`` is added to a URL with no path. The user name and password are percent-decoded.
    """
    text = str(base_url).strip()
    shown = _public_url(text)
    example = "pass e.g. http://127.0.0.1:8000/v1"
    if any(character.isspace() or not character.isprintable() for character in text):
        raise AstroVLMError(f"Server URL {shown!r} contains spaces or control characters; {example}.")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        host = text.partition("://")[2].partition("/")[0].rpartition("@")[2]
        hint = (" Put an IPv6 address in brackets: http://[::1]:8000/v1." if host.count(":") > 1
                and not host.startswith("[") else "")
        raise AstroVLMError(f"Server URL {shown!r} has no valid host and port; {example}.{hint}") from None
    if port == 0:
        raise AstroVLMError(f"Server URL {shown!r} has no valid host and port (port 0); {example}.")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AstroVLMError(f"Server URL {shown!r} is not an http(s) URL with a host; {example}.")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise AstroVLMError(f"Server URL {shown!r} has a query string or fragment (after ? or #), which an "
                            f"API root never has; remove it ({example}).")
    path = parts.path.rstrip("/")
    if path.endswith(_ENDPOINTS):
        raise AstroVLMError(f"Server URL {shown!r} names an endpoint; pass the API root it is under "
                            "(usually ending in /v1), e.g. http://127.0.0.1:8000/v1.")
    netloc = parts.netloc.rpartition("@")[2]
    root = urlunsplit((parts.scheme, netloc, path or "/v1", "", ""))
    import httpx

    try:
        httpx.URL(root)
    except httpx.InvalidURL as error:
        raise AstroVLMError(f"Server URL {root!r} is not valid ({error}); {example}.") from None
    return root, parts.scheme, parts.hostname, unquote(parts.username or ""), unquote(parts.password or "")


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy that the environment names for ``scheme://host`` (``HTTPS_PROXY``, ``NO_PROXY``, ...).

    A loopback host never goes through a proxy: the proxy's loopback is not this machine's.
    """
    import urllib.request

    if _is_loopback(host):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    proxy = proxy if "://" in proxy else f"http://{proxy}"
    kind = urlsplit(proxy).scheme
    if kind not in ("http", "https", "socks5", "socks5h"):
        raise AstroVLMError(f"The proxy set in the environment for {scheme} ($ALL_PROXY or "
                            f"${scheme.upper()}_PROXY) is a {kind}:// URL, which is not supported; use an "
                            f"http:// proxy, or add {host} to $NO_PROXY.")
    if kind.startswith("socks"):
        import importlib.util

        if importlib.util.find_spec("socksio") is None:
            raise AstroVLMError(f"The environment sends {scheme} requests through a SOCKS proxy, which needs "
                                f"socksio (pip install socksio); or add {host} to $NO_PROXY.")
    return proxy


# ---------------------------------------------------------------------------------------------- backend
class RemoteVLM(VLM):
    """A vision-language model behind an OpenAI-compatible server (vLLM, SGLang, ``transformers serve``).

    Parameters
    ----------
    base_url : str
        The server's API root, e.g. ``'http://127.0.0.1:8000/v1'``; ``/v1`` is added to a URL with no
        path. IPv6 hosts go in brackets (``http://[::1]:8000/v1``). A user name and password in the URL
        (``http://user:pw@host/v1``) are sent as HTTP Basic auth when no API key is; they never appear in
        `name`, results, logs or errors. A URL with a query string is refused.
    model : str, optional
        The served model's name, as the server lists it at ``GET /models``. By default the server is
        asked: with one model, that one is used; with none listed (``transformers serve`` 5.23 lists
        its cache, not the model pinned on its command line; 5.24 lists the pinned model), requests name
        no model and the server's own model answers; with several, this raises `AstroVLMError` listing
        them.
    api_key_env : str, optional
        Environment variable holding the API key for this server, sent as ``Authorization: Bearer``.
        ``$OPENAI_API_KEY`` is used instead only when this variable is unset and the URL is OpenAI's own
        API (``https://api.openai.com``); it is never sent to any other server. Without a key, requests
        carry no authorisation (or the URL's user name and password).
    timeout : float, optional
        Seconds allowed for each request in all: connecting, sending, and reading the whole answer. A
        request that runs out of time is retried like any time-out.
    max_retries : int, optional
        Retries after the first try of a request that failed to connect, timed out, or got HTTP 429 or
        5xx; waits 0.5 s, 1 s, 2 s, ... between tries (or the server's ``Retry-After``, at most 30 s).
    concurrency : int, optional
        Requests in flight at once when several images are sent (1 to `MAX_CONCURRENCY`).
    classify_method : {'auto', 'systemone', 'logprobs'}, optional
        How labels are scored (see the module docstring). ``'auto'`` tries ``systemone`` then
        ``logprobs`` on the first image and keeps the first that works.
    backoff : float, optional
        Seconds before the first retry; doubled for every further one.

    Attributes
    ----------
    name : str
        ``'<model> @ <url>'``: what `Result.model` records (never a key, user name or password).
    url : str
        The API root as shown everywhere: no user name, no password.
    api_key_source : str or None
        The environment variable whose key is sent (``api_key_env`` or ``'OPENAI_API_KEY'``), or None.
    classify_method : str
        The method asked for; `resolved_classify_method` is the one in use once ``'auto'`` has chosen.

    Notes
    -----
    ``image_tokens`` in results is the prompt length the server reports (image plus text tokens), an
    upper bound on the image tokens: servers do not report image tokens separately. A missing or
    malformed ``usage`` leaves it empty. A chat answer whose ``content`` is null gives an empty answer;
    any other malformed answer (no choices, content that is not text, log-probabilities or
    probabilities that are not numbers, a body that is not JSON or larger than `MAX_ANSWER_BYTES`)
    raises `AstroVLMError` naming the server and what was wrong.

    When a request fails for good, whatever the cause (the server refused, went away, timed out, or
    answered something malformed), no further requests are sent, and the exception raised carries the
    results that did finish, in input order, as its ``results`` attribute (``[]`` when none did).

    Environment proxies (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) are followed,
    except for a loopback server, which is always reached directly. Redirects are not followed (a key
    would go with them): a redirect answer raises `AstroVLMError` naming the URL to use instead.

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
        from .deadline_transport import DeadlineTransport

        if classify_method not in CLASSIFY_METHODS:
            raise AstroVLMError(f"classify_method must be one of {', '.join(CLASSIFY_METHODS)}, "
                                f"got {classify_method!r}.")
        self.timeout = _seconds("timeout", timeout, positive=True)
        self.max_retries = _count("max_retries", max_retries, 0)
        self.concurrency = _count("concurrency", concurrency, 1, MAX_CONCURRENCY)
        self.backoff = _seconds("backoff", backoff, positive=False)
        if not isinstance(api_key_env, str) or not api_key_env.strip():
            raise AstroVLMError(f"api_key_env must name an environment variable, e.g. 'ASTROVLM_API_KEY'; "
                                f"got {api_key_env!r}.")
        base_url, scheme, host, user, password = _server_url(base_url)

        self.base_url = base_url
        self.url = base_url
        self.classify_method = classify_method
        self.api_key_env = api_key_env
        self.adapter = None
        self._resolved_method: str | None = None if classify_method == "auto" else classify_method
        self._method_lock = threading.Lock()
        self._closed = False

        headers, auth = self._credentials(scheme, host, user, password)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        try:
            transport = DeadlineTransport(limits, _proxy_for(scheme, host))
        except ValueError as error:  # httpx.Proxy refuses the proxy URL
            raise AstroVLMError(f"The proxy set in the environment for {scheme} cannot be used ({error}); "
                                f"fix $HTTPS_PROXY / $HTTP_PROXY / $ALL_PROXY or add {host} to $NO_PROXY."
                                ) from None
        self._client = httpx.Client(transport=transport, headers=headers, auth=auth,
                                    timeout=httpx.Timeout(self.timeout), follow_redirects=False)

        self.model = None if model is None else (str(model).strip() or None)
        if self.model is None:
            try:
                self.model = self._served_model()
            except BaseException:
                self._client.close()
                raise
        self.name = f"{self.model} @ {self.url}" if self.model else f"{self.url} (the server's model)"
        log.info("Remote model %s: timeout %g s per request, %d retries, %d requests at once, classify "
                 "method %s, %s", self.name, self.timeout, self.max_retries, self.concurrency,
                 self.classify_method,
                 f"API key from ${self.api_key_source}" if self.api_key_source else "no API key")


    def _credentials(self, scheme: str, host: str, user: str, password: str):
        """The headers and auth of every request, choosing the key (see the class docstring's rule)."""
        import httpx

        # the project's key goes to the server the user chose; OpenAI's key only to OpenAI's API
        own_key = os.environ.get(self.api_key_env, "").strip()
        openai_key = os.environ.get("OPENAI_API_KEY", "").strip()
        is_openai = scheme == "https" and host == OPENAI_API_HOST
        if own_key:
            key, self.api_key_source = own_key, self.api_key_env
        elif openai_key and is_openai:
            key, self.api_key_source = openai_key, "OPENAI_API_KEY"
        else:
            key, self.api_key_source = "", None
        self._openai_key_withheld = bool(openai_key) and self.api_key_source is None
        basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii") if user or password else ""
        self._secrets = sorted({value for value in (key, user, password, basic) if len(value) >= 3},
                               key=len, reverse=True)
        if key and any(not 33 <= ord(character) < 127 for character in key):
            raise AstroVLMError(f"${self.api_key_source} holds a space, a line break or a non-ASCII "
                                "character, which cannot go in an HTTP header; set it to the key alone.")
        headers = {"Accept": "application/json"}
        auth = None
        if key:
            headers["Authorization"] = f"Bearer {key}"
            if user or password:
                log.warning("The user name and password in the URL of %s are not sent: the API key from $%s "
                            "is sent instead.", self.url, self.api_key_source)
        elif user or password:
            auth = httpx.BasicAuth(user, password)
        if (key or password) and scheme == "http" and not _is_loopback(host):
            log.warning("The API key or password is sent unencrypted over http to %s; use https or an SSH "
                        "tunnel.", host)
        return headers, auth

    # ------------------------------------------------------------------ lifecycle
    @property
    def resolved_classify_method(self) -> str | None:
        """The classify method in use: ``classify_method``, or what ``'auto'`` chose (`None` before)."""
        return self._resolved_method

    def close(self) -> None:
        """Close the connections to the server; later requests raise `AstroVLMError`."""
        self._closed = True
        self._client.close()

    def __enter__(self) -> "RemoteVLM":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP
    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _detail(self, content: bytes) -> str:
        try:
            data = json.loads(content)
        except (ValueError, RecursionError):
            detail = content.decode("utf-8", "replace")
        else:
            detail = data
            if isinstance(data, dict):
                detail = data.get("detail") or data.get("error") or data.get("message") or data
                if isinstance(detail, dict):
                    detail = detail.get("message") or detail
            if not isinstance(detail, str):
                detail = _DETAIL.repr(detail)
        detail = self._redact(" ".join(detail.split()))
        return detail[:500] + ("..." if len(detail) > 500 else "")

    def _malformed(self, what: str, problem: str, value: Any = None) -> AstroVLMError:
        """The error for an answer of the wrong shape: which server, which request, what was wrong."""
        excerpt = "" if value is None else f": {self._redact(_excerpt(value))}"
        return AstroVLMError(f"The server at {self.url} answered {what} with {problem}{excerpt}. Check that "
                             "the URL points at an OpenAI-compatible server (vLLM, SGLang, transformers "
                             "serve) and see the server's log.")

    def _retry_delay(self, attempt: int, answer: tuple | None = None) -> float:
        delay = self.backoff * 2.0 ** min(attempt - 1, 32)
        after = _retry_after(answer[1].get("Retry-After")) if answer is not None else None
        if after is not None:
            delay = max(delay, after)
        return min(delay, _MAX_BACKOFF)

    def _send(self, method: str, url: str, body: dict | None, what: str) -> tuple[int, Any, bytes]:
        """One try: status, headers and the body (at most `MAX_ANSWER_BYTES`)."""
        too_large = AstroVLMError(f"The server at {self.url} answered {what} with more than "
                                  f"{MAX_ANSWER_BYTES // 2**20} MiB, far more than any answer needs; check "
                                  "that the URL points at an OpenAI-compatible API (it usually ends in /v1).")
        with self._client.stream(method, url, json=body) as response:
            declared = response.headers.get("Content-Length", "").strip()
            if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
                raise too_large
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise too_large
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)

    def _request(self, method: str, path: str, body: dict | None = None, abort=None) -> Any:
        """Send one request with retries; return the decoded JSON answer.

        Raises `AstroVLMError` when the server cannot be reached, does not answer in time after all
        tries, or answers something that is not JSON; `ServerRefused` on an HTTP error; and `_Cancelled`
        when ``abort`` (an event) is set while waiting to retry.
        """
        import httpx

        from .deadline_transport import deadline

        if self._closed:
            raise AstroVLMError(f"The remote model at {self.url} was closed; load it again "
                                "(load_model(URL)).")
        url = f"{self.base_url}{path}"
        shown = f"{self.url}{path}"
        what = f"{method} {path}"
        tries = self.max_retries + 1
        failure: tuple[str, Any] = ("", None)
        for attempt in range(tries):
            if attempt:
                delay = self._retry_delay(attempt, failure[1] if failure[0] == "status" else None)
                log.debug("Retrying %s %s in %.1f s (try %d of %d) after %s", method, shown, delay,
                          attempt + 1, tries, failure[0])
                if abort is not None:
                    if abort.wait(delay):
                        raise _Cancelled()
                else:
                    time.sleep(delay)
            try:
                with deadline(self.timeout):
                    status, headers, content = self._send(method, url, body, what)
            except httpx.TimeoutException as error:
                failure = ("timeout", error)
                continue
            except httpx.TransportError as error:
                failure = ("connection", error)
                continue
            except httpx.DecodingError:
                raise AstroVLMError(f"The server at {shown} answered {method} with a body that cannot be "
                                    "decoded (bad Content-Encoding); see the server's log.") from None
            if status in _RETRY_STATUSES:
                failure = ("status", (status, headers, content))
                continue
            if 300 <= status < 400:
                location = _public_url(headers.get("Location", "")) or "another URL"
                raise AstroVLMError(f"The server at {shown} answered {method} with HTTP {status}, a redirect "
                                    f"to {location}; redirects are not followed (the API key would go with "
                                    "them). Pass the URL the server redirects to, e.g. https instead of "
                                    "http.")
            if status >= 400:
                raise self._refused(method, shown, status, content, tries=1)
            try:
                return json.loads(content)
            except (ValueError, RecursionError):
                raise AstroVLMError(f"The server at {shown} answered HTTP {status} with something that is "
                                    "not JSON; check that the URL points at an OpenAI-compatible API (it "
                                    "usually ends in /v1).") from None
        kind, cause = failure
        if kind == "timeout":
            raise AstroVLMError(
                f"The server at {self.url} did not answer within {self.timeout:g} s after {_tries(tries)} "
                f"({type(cause).__name__} on {method} {path}); the limit covers the whole request, from "
                "connecting to the last byte of the answer. Check that the server is running and not "
                "overloaded; a large model or a slow GPU may need a longer limit (--timeout / timeout=)."
            ) from None
        if kind == "connection":
            reason = f"{type(cause).__name__}: {self._redact(str(cause)) or 'no answer'}"
            if not isinstance(cause, httpx.ConnectError):  # connected, then the connection broke
                raise AstroVLMError(
                    f"The connection to the server at {self.url} broke off during {method} {path}, "
                    f"{_tries(tries)} in a row ({reason}). The server may have crashed or run out of memory; "
                    "check its log, and that it is still running.") from None
            raise AstroVLMError(
                f"Could not connect to the server at {self.url} after {_tries(tries)} ({reason}). Check that "
                "the server is running, that host and port are right, and, for a server on a cluster node, "
                "that the SSH tunnel is open (ssh -N -L 8000:NODE:8000 LOGIN-HOST).") from None
        status, _, content = cause
        raise self._refused(method, shown, status, content, tries=tries)

    def _refused(self, method: str, shown: str, status: int, content: bytes, tries: int) -> ServerRefused:
        detail = self._detail(content)
        after = f" after {_tries(tries)}" if tries > 1 else ""
        message = f"The server at {shown} answered {method} with HTTP {status}{after}: {detail}"
        if status in (401, 403):
            where = (f"the key in ${self.api_key_source}" if self.api_key_source
                     else f"no key (${self.api_key_env} is unset)")
            message += (f". The server wants an API key and this request sent {where}; set "
                        f"{self.api_key_env} to the key the server was started with (e.g. vLLM --api-key).")
            if self._openai_key_withheld:
                message += (f" $OPENAI_API_KEY is set but is sent only to https://{OPENAI_API_HOST}, never "
                            "to other servers.")
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
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise self._malformed("GET /models", "no list of models under 'data'", data)
        names = []
        for entry in entries:
            name = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name.strip():
                raise self._malformed("GET /models", "a model without a name ('id')", entry)
            names.append(name)
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

    def _chat(self, image_b64: str | None, prompt: str, abort, messages: list | None = None,
              **options) -> tuple[dict, dict]:
        """Send one chat completion (or ``messages``, a whole conversation); return the answer and its
        first choice."""
        if messages is None:
            messages = [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_b64}"}},
                {"type": "text", "text": prompt}]}]
        body = self._body(messages=messages, temperature=0, stream=False, **options)
        data = self._request("POST", "/chat/completions", body, abort)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices:
            raise self._malformed("POST /chat/completions", "no choices", data)
        if not isinstance(choices[0], dict):
            raise self._malformed("POST /chat/completions", "a choice that is not an object", choices[0])
        return data, choices[0]

    def _answer_text(self, choice: dict) -> str:
        """The text of a chat choice: ``content`` (text, null, or a list of text parts)."""
        message = choice.get("message")
        if not isinstance(message, dict):
            raise self._malformed("POST /chat/completions", "a choice without a message object", choice)
        content = message.get("content")
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text"
                                             and isinstance(part.get("text"), str) for part in content):
            return "".join(part["text"] for part in content)
        raise self._malformed("POST /chat/completions", "a message content that is neither text nor null",
                              content)

    def _prompt_tokens(self, data: dict, key: str = "prompt_tokens") -> int | None:
        """The prompt length from ``usage``; None (logged) when it is missing or not a count."""
        usage = data.get("usage") if isinstance(data, dict) else None
        if usage is None:
            return None
        value = usage.get(key) if isinstance(usage, dict) else None
        number = _real(value)
        if number is None or number < 0 or number != int(number):
            log.debug("%s reported usage %s; image_tokens is left empty.", self.url, _excerpt(usage))
            return None
        return int(number)

    # ------------------------------------------------------------------ running many requests
    def _run(self, images: Sequence[ModelImage], one: Callable[[ModelImage, _Abort], Result],
             progress: ProgressCallback | None, cancel, first: Result | None = None) -> list[Result]:
        """Call ``one(image, abort)`` for each image, ``concurrency`` at a time; results in input order.

        ``first`` is an already finished result for ``images[0]``. Each request checks ``cancel`` before it
        is sent; if any image was skipped, `OperationCancelled` carries the finished results in order. If a
        request fails, no further requests are sent, retries in flight stop waiting (``abort``), and the
        error is raised with the finished results as its ``results`` attribute.
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
        abort = _Abort(cancel, stop)

        def task(index: int) -> Result | None:
            if abort.is_set():
                return None
            try:
                return one(images[index], abort)
            except _Cancelled:
                return None

        failure: BaseException | None = None
        pending = iter([i for i in range(total) if results[i] is None])
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="astrovlm-remote") as pool:
            in_flight: dict = {}

            def submit_more() -> None:
                # here, after each progress call, so that a cancel set there stops the next request
                while len(in_flight) < self.concurrency and not abort.is_set():
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
            except BaseException as error:
                stop.set()  # e.g. KeyboardInterrupt or a failing progress callback: send nothing more
                _keep_results(error, [result for result in results if result is not None])
                raise
        finished = [result for result in results if result is not None]
        if failure is not None:
            _keep_results(failure, finished)
            raise failure
        if len(finished) < total:
            raise OperationCancelled(finished)
        return finished

    # ------------------------------------------------------------------ ask / describe
    def _generate(self, images: list[ModelImage], prompt: str, task: str, max_new_tokens: int,
                  progress, cancel) -> list[Result]:
        max_new_tokens = _count("max_new_tokens", max_new_tokens, 1)

        def one(model_image: ModelImage, abort) -> Result:
            data, choice = self._chat(_png_base64(model_image.image), prompt, abort,
                                      max_tokens=max_new_tokens)
            answer = self._answer_text(choice)
            return text_result(model_image, task, prompt, answer, self.name, None, self._prompt_tokens(data))

        try:
            return self._run(images, one, progress, cancel)
        except BaseException as error:
            _keep_results(error, [])
            raise

    def _converse(self, conversation, question: str, max_new_tokens: int) -> Result:
        from .conversing import remote_turn

        return remote_turn(self, conversation, question, _count("max_new_tokens", max_new_tokens, 1))

    # ------------------------------------------------------------------ classify
    def _classify(self, images: list[ModelImage], label_set: LabelSet, progress, cancel) -> list[Result]:
        try:
            return self._classify_all(images, label_set, progress, cancel)
        except BaseException as error:
            _keep_results(error, [])
            raise

    def _classify_all(self, images: list[ModelImage], label_set: LabelSet, progress, cancel) -> list[Result]:
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

        def one(model_image: ModelImage, abort) -> Result:
            return self._classify_one(model_image, label_set, prompt, order, self._resolved_method, abort)

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
                      method: str, abort) -> Result:
        image_b64 = _png_base64(model_image.image)
        if method == "systemone":
            lettered, tokens = self._systemone(image_b64, label_set, order, abort)
        else:
            lettered, tokens = self._logprobs(image_b64, prompt, len(label_set), abort)
        probabilities = [0.0] * len(label_set)
        for probability, index in zip(lettered, order):
            probabilities[index] = probability
        result = classification_result(model_image, label_set, probabilities, self.name, None, tokens)
        return replace(result, prompt=prompt, prompt_hash=hashlib.sha256(prompt.encode()).hexdigest()[:12])

    def _systemone(self, image_b64: str, label_set: LabelSet, order: list[int],
                   abort) -> tuple[list[float], int | None]:
        """Option probabilities in canonical order from ``/v1/systemone``, and the prompt tokens."""
        criteria = {label_set.labels[i]: (label_set.descriptions[i] or None) for i in order}
        body = self._body(
            state=f"{IMAGE_PLACEHOLDER}\n{label_set.question.strip()}",
            questions={"label": {"type": "choice", "criteria": criteria}},
            assets={IMAGE_PLACEHOLDER: {"type": "image", "format": "png", "data_base64": image_b64}},
        )
        try:
            data = self._request("POST", "/systemone", body, abort)
        except ServerRefused as error:
            if error.status in (404, 405):
                raise _MethodUnavailable(f"{self.url} has no /systemone endpoint (only `transformers serve` "
                                         "has one); use classify_method='logprobs' for vLLM or SGLang."
                                         ) from None
            if "char_to_token" in error.detail:  # transformers 5.23, Idefics3 processors (SmolVLM)
                raise ServerRefused(f"{error} {_IDEFICS3_HINT}", error.status, error.detail) from None
            raise
        what = "POST /systemone"
        answers = data.get("answers") if isinstance(data, dict) else None
        answer = answers.get("label") if isinstance(answers, dict) else None
        by_label = answer.get("probabilities") if isinstance(answer, dict) else None
        if not isinstance(by_label, dict):
            raise self._malformed(what, "no probabilities (answers.label.probabilities)", data)
        lettered = []
        for index in order:
            label = label_set.labels[index]
            if label not in by_label:
                raise self._malformed(what, f"no probability for the label {label!r}", by_label)
            value = _real(by_label[label])
            if value is None or not 0.0 <= value <= 1.0 + 1e-6:
                raise self._malformed(what, f"a probability for {label!r} that is not a number from 0 to 1",
                                      by_label[label])
            lettered.append(value)
        if sum(lettered) <= 0:
            raise self._malformed(what, "probability 0 for every label", by_label)
        return lettered, self._prompt_tokens(data, "input_tokens")

    def _logprobs(self, image_b64: str, prompt: str, n_options: int,
                  abort) -> tuple[list[float], int | None]:
        """Option probabilities in letter order from the top log-probabilities of one generated token."""
        data, choice = self._chat(image_b64, prompt, abort, max_tokens=1, logprobs=True,
                                  top_logprobs=TOP_LOGPROBS)
        what = "POST /chat/completions"
        logprobs = choice.get("logprobs")
        if logprobs is not None and not isinstance(logprobs, dict):
            raise self._malformed(what, "logprobs that are not an object", logprobs)
        content = (logprobs or {}).get("content")
        if content is not None and not (isinstance(content, list)
                                        and all(isinstance(entry, dict) for entry in content)):
            raise self._malformed(what, "logprobs.content that is not a list of objects", content)
        top = content[0].get("top_logprobs") if content else None
        if not top:
            raise _MethodUnavailable(f"{self.url} returned no log-probabilities (`transformers serve` "
                                     "ignores `logprobs`); use classify_method='systemone' there, or a vLLM "
                                     "or SGLang server.")
        if not isinstance(top, list):
            raise self._malformed(what, "top_logprobs that are not a list", top)
        try:
            probabilities, found = letter_probabilities(top, n_options)
        except ValueError as error:
            raise self._malformed(what, f"unusable top_logprobs ({self._redact(str(error))})") from None
        if not found:
            log.warning("No option letter among the %d most likely first tokens of %s; every label gets "
                        "probability 1/%d for this image.", len(top), self.name, n_options)
        return probabilities, self._prompt_tokens(data)
