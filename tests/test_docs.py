"""Every snippet of README.md and docs/*.md runs as written.

Each ```python block, and each ``astrovlm ...`` command in a ```bash block (also after ``&&``), is one
test, named ``page:line``. The blocks of one page run in order in one namespace and one working
folder, which holds the files the docs are written against:

========================  ==============================================================
``image.fits``            HorseHead.fits (DSS, 2-D, celestial WCS)
``radio.fits``            a FIRST image from MiraBest (an FR II)
``cube.fits``             the L1448 13CO cube
``rgb_g/r/i.fits``        three SDSS bands on one pixel grid
``galaxy.jpg``            a Galaxy Zoo 2 colour cutout
``sources.ecsv``          ra/dec of sources detected on image.fits
``labelled/ valid/ test/`` FIRST PNGs, one sub-folder per class (train, valid, test splits)
``../shared``             the real data folder beside the repository
========================  ==============================================================

and ``HF_HOME`` is a Hugging Face cache in the Hub's own layout (``models--ORG--NAME/snapshots/SHA``
and ``refs/main``), offline, where the Hub ids in ``HUB_MODELS`` resolve to tiny models with random
weights. ``ASTROVLM_CONFIG_DIR`` is a folder of the page's own.

A block is not run when it is a ```text or ```console block, or when the line before it is
``<!-- docs: not run: REASON -->`` (a GPU cluster, ``sbatch``, ``pip install``, a server...).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!--\s*docs:\s*not run:\s*(.+?)\s*-->")
RUN_LANGUAGES = {"python", "bash"}


def _smolvlm(out: Path) -> Path:
    from glue_astrovlm.testing import build_smolvlm

    return build_smolvlm(out)


def _family(name: str):
    """A builder from ``glue_astrovlm.testing.build_family(name, out_dir)`` once it exists (None until
    then); ``name`` is the configuration folder's name in ``../shared/models``."""
    from glue_astrovlm import testing

    build_family = getattr(testing, "build_family", None)
    if build_family is None:
        return None
    return lambda out: build_family(name, out)


#: Hub ids the docs may use, and how to build a tiny random-weight stand-in for each. `None` means
#: not built yet: a snippet naming such an id is skipped with the reason (extend the table instead).
#: The LLaVA-1.5 stand-in keeps the real llava-hf tokenizer, 336-px processor and chat template.
HUB_MODELS = {
    "HuggingFaceTB/SmolVLM-256M-Instruct": lambda: _smolvlm,
    "llava-hf/llava-1.5-7b-hf": lambda: _family("llava-1.5-7b-hf"),
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": lambda: _family("llava-onevision-qwen2-0.5b-ov-hf"),
    "llava-hf/llava-v1.6-mistral-7b-hf": lambda: _family("llava-v1.6-mistral-7b-hf"),
    "Qwen/Qwen2.5-VL-3B-Instruct": lambda: _family("Qwen2.5-VL-3B-Instruct"),
}
FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int          # 1-based line of the code in the page
    kind: str          # "python" or "astrovlm"
    code: str          # Python source, or the command line
    skip: str = ""     # why it is not run ("" when it is)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(path: Path):
    """(language, first code line, lines, not-run reason) of each fenced block of a Markdown page."""
    lines = path.read_text(encoding="utf-8").splitlines()
    reason, index = "", 0
    while index < len(lines):
        stripped = lines[index].strip()
        marker = NOT_RUN.search(stripped)
        if marker:
            reason = marker.group(1)
        elif stripped.startswith("```"):
            fence = stripped[:len(stripped) - len(stripped.lstrip("`"))]
            info = stripped[len(fence):].split()
            language = info[0].lower() if info else ""
            indent = len(lines[index]) - len(lines[index].lstrip())
            start, index = index + 1, index + 1
            while index < len(lines) and not lines[index].strip().startswith(fence):
                index += 1
            body = [line[indent:] if not line[:indent].strip() else line.lstrip()
                    for line in lines[start:index]]
            yield language, start + 1, body, reason
            reason = ""
        elif stripped:
            reason = ""
        index += 1


def _commands(first_line: int, body: list[str]):
    """(line, command) of each ``astrovlm`` command of a bash block, continuation lines joined."""
    index = 0
    while index < len(body):
        line_no, text = first_line + index, body[index]
        while text.rstrip().endswith("\\") and index + 1 < len(body):
            index += 1
            text = text.rstrip()[:-1] + " " + body[index].strip()
        index += 1
        for part in text.split("&&"):
            part = part.strip()
            if part.startswith("astrovlm "):
                yield line_no, part


def extract(path: Path) -> list[Snippet]:
    snippets = []
    for language, line, body, reason in _blocks(path):
        if language not in RUN_LANGUAGES:
            continue
        if language == "python":
            snippets.append(Snippet(path, line, "python", "\n".join(body), reason))
        else:
            snippets.extend(Snippet(path, number, "astrovlm", command, reason)
                            for number, command in _commands(line, body))
    return snippets


SNIPPETS = [snippet for page in PAGES for snippet in extract(page)]


# --- the folder the docs are written against ---------------------------------------------------------

def _write_sources(image: Path, out: Path) -> None:
    from glue_astrovlm import detect_sources

    table = detect_sources(image, nsigma=10, max_sources=12)
    table["id", "ra", "dec"].write(out, format="ascii.ecsv")


def _decompress(source: Path, out: Path) -> None:
    import bz2

    with bz2.open(source) as packed, open(out, "wb") as plain:
        shutil.copyfileobj(packed, plain)


def _hub_cache(hub: Path, build_root: Path) -> dict[str, str]:
    """Build every buildable id of HUB_MODELS into ``hub`` in the Hub's layout; the ids not built, and why."""
    missing = {}
    for hub_id, builder in HUB_MODELS.items():
        build = builder()
        if build is None:
            missing[hub_id] = "glue_astrovlm.testing cannot build this family yet"
            continue
        repo = hub / f"models--{hub_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / FAKE_SHA
        try:
            build(build_root / hub_id.replace("/", "--"))
        except Exception as error:  # noqa: BLE001 - reported by test_every_hub_id_builds
            missing[hub_id] = f"building it failed: {type(error).__name__}: {error}"
            continue
        shutil.copytree(build_root / hub_id.replace("/", "--"), snapshot)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(FAKE_SHA)
    return missing


@pytest.fixture(scope="session")
def docs_folder(shared_data, first_subset, tmp_path_factory):
    """The parent of one working folder per page: the data files, ``shared`` and the Hugging Face cache."""
    from glue_astrovlm.testing import SHARED_SMOLVLM_CONFIG

    if not SHARED_SMOLVLM_CONFIG.is_dir():
        pytest.skip(f"model configuration {SHARED_SMOLVLM_CONFIG} is not available")
    root = tmp_path_factory.mktemp("docs")
    data = root / "data"
    data.mkdir()
    fits = shared_data / "fits"
    shutil.copy(fits / "HorseHead.fits", data / "image.fits")
    shutil.copy(fits / "first_mirabest" / "200_151.463+024.320_0.1843_0013.65.fits", data / "radio.fits")
    shutil.copy(fits / "l1448_13co.fits", data / "cube.fits")
    for band in "gri":
        _decompress(fits / f"reprojected_sdss_{band}.fits.bz2", data / f"rgb_{band}.fits")
    shutil.copy(sorted((shared_data / "gz2_spiral").rglob("*.jpg"))[0], data / "galaxy.jpg")
    _write_sources(data / "image.fits", data / "sources.ecsv")
    for name, split, per_class in (("labelled", "train", 2), ("valid", "valid", 1), ("test", "test", 2)):
        shutil.copytree(first_subset(split, per_class), data / name)
    pages = root / "pages"
    pages.mkdir()
    (pages / "shared").symlink_to(shared_data.parent.resolve())
    missing = _hub_cache(root / "hf" / "hub", root / "built")
    return {"root": root, "data": data, "pages": pages, "hf": root / "hf", "missing": missing}


def _page_folder(docs_folder, page: Path) -> Path:
    folder = docs_folder["pages"] / page.stem
    if not folder.exists():
        folder.mkdir()
        for item in docs_folder["data"].iterdir():
            (folder / item.name).symlink_to(item)
    return folder


@pytest.fixture()
def docs_env(docs_folder, monkeypatch):
    """Run in the page's folder with the offline Hugging Face cache and a configuration of its own."""
    from huggingface_hub import constants

    hub = str(docs_folder["hf"] / "hub")
    monkeypatch.setenv("HF_HOME", str(docs_folder["hf"]))
    monkeypatch.setenv("HF_HUB_CACHE", hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    for name, value in (("HF_HOME", str(docs_folder["hf"])), ("HF_HUB_CACHE", hub),
                        ("HUGGINGFACE_HUB_CACHE", hub), ("HF_HUB_OFFLINE", True)):
        monkeypatch.setattr(constants, name, value)

    def enter(page: Path) -> Path:
        folder = _page_folder(docs_folder, page)
        monkeypatch.chdir(folder)
        monkeypatch.setenv("ASTROVLM_CONFIG_DIR", str(docs_folder["root"] / "config" / page.stem))
        return folder

    return enter


NAMESPACES: dict[Path, dict] = {}


def _unbuilt_ids(snippet: Snippet, missing: dict[str, str]) -> list[str]:
    return [hub_id for hub_id in missing if hub_id in snippet.code]


def _snippet_warnings() -> None:
    """As in a user's session, other packages' deprecation warnings do not stop a snippet; those of a
    call the snippet makes itself, or of the project's code, do (a page must not teach what is going)."""
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("error", category=category, module=r"(docs:|glue_astrovlm|jdaviz_plugin)")
    # The pages show Imviz and Cubeviz knowingly (jdaviz.md says that 5.2 removes them).
    warnings.filterwarnings("ignore", message="(Imviz|Cubeviz) is deprecated", category=DeprecationWarning)


def _run_python(snippet: Snippet) -> None:
    namespace = NAMESPACES.setdefault(snippet.page, {"__name__": f"docs:{snippet.page.name}"})
    # Pad so that a traceback names the page's own line numbers.
    code = compile("\n" * (snippet.line - 1) + snippet.code, str(snippet.page), "exec")
    with warnings.catch_warnings():
        _snippet_warnings()
        exec(code, namespace)


def _run_command(snippet: Snippet, capsys) -> None:
    from glue_astrovlm.cli import main

    argv = shlex.split(snippet.code, comments=True)[1:]
    status = main(argv)
    output = capsys.readouterr()
    assert status == 0, f"`{snippet.code}` exited with {status}:\n{output.err[-3000:]}"


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[snippet.id for snippet in SNIPPETS])
def test_snippet_runs(snippet: Snippet, docs_folder, docs_env, capsys):
    if snippet.skip:
        pytest.skip(f"not run: {snippet.skip}")
    unbuilt = _unbuilt_ids(snippet, docs_folder["missing"])
    if unbuilt:
        pytest.skip(f"{', '.join(unbuilt)}: {docs_folder['missing'][unbuilt[0]]}")
    docs_env(snippet.page)
    if snippet.kind == "python":
        _run_python(snippet)
    else:
        _run_command(snippet, capsys)


def test_every_hub_id_builds(docs_folder):
    """A Hub id whose builder exists must build (only a family testing.py lacks may be missing)."""
    failed = {hub_id: why for hub_id, why in docs_folder["missing"].items() if why.startswith("building")}
    assert not failed, failed


def test_every_page_has_snippets_found():
    """The extractor sees the README's quickstarts (a broken fence would silently drop them)."""
    readme = [snippet for snippet in SNIPPETS if snippet.page.name == "README.md"]
    assert any(snippet.kind == "python" for snippet in readme)
    assert any(snippet.code.startswith("astrovlm classify") for snippet in readme)


def test_extractor_rules(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "```bash", "pip install x && astrovlm presets   # comment", "astrovlm classify a.fits \\",
        "    --preset galaxy-zoo", "ls", "```",
        "<!-- docs: not run: needs a GPU -->", "```python", "print(1)", "```",
        "```text", "astrovlm presets", "```", "- item", "  ```python", "  x = 1", "  ```",
    ]))
    snippets = extract(page)
    assert [(s.line, s.kind, s.code, s.skip) for s in snippets] == [
        (2, "astrovlm", "astrovlm presets   # comment", ""),
        (3, "astrovlm", "astrovlm classify a.fits  --preset galaxy-zoo", ""),
        (9, "python", "print(1)", "needs a GPU"),
        (16, "python", "x = 1", ""),
    ]


@pytest.fixture(scope="module", autouse=True)
def _close_windows():
    yield
    for namespace in NAMESPACES.values():
        for value in list(namespace.values()):
            if type(value).__name__ == "GlueApplication":
                value.close()
    NAMESPACES.clear()
