"""The session every front end drives: requests in, results (and their history) out, cancellable."""

import threading

import numpy as np
import pytest

from glue_astrovlm import AstroVLMError, OperationCancelled
from glue_astrovlm.requests import Request
from glue_astrovlm.session import VLMSession, recent_models


@pytest.fixture()
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROVLM_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(96, 96))
    data[40:56, 30:70] += 8.0
    return data


def test_a_request_runs_end_to_end_and_is_remembered(tiny_smolvlm_dir, image, config_dir):
    session = VLMSession(str(tiny_smolvlm_dir), dtype="float32")
    seen, prepared = [], []
    request = Request(image=image, send="position", position=(48, 48), size=32, labels=["jet", "blob"])
    results = session.run(request, progress=lambda done, total: seen.append((done, total)),
                          on_prepared=prepared.append)
    assert len(results) == 1 and results[0].label in ("jet", "blob")
    assert seen[0] == (0, 1) and seen[-1] == (1, 1)
    assert len(prepared[0]) == 1 and session.history == results
    assert recent_models()[0]["model"] == str(tiny_smolvlm_dir)
    answer, = session.submit(request.replace(task="ask", question="What is it?", max_new_tokens=2)).result()
    assert answer.task == "ask" and len(session.history) == 2


def test_a_session_that_is_told_not_to_remember_writes_no_config(tiny_smolvlm_dir, image, config_dir):
    session = VLMSession(str(tiny_smolvlm_dir), dtype="float32", remember=False)
    session.run(Request(image=image, labels=["a", "b"]))
    assert not config_dir.exists()


def test_cancel_keeps_what_finished(tiny_smolvlm_dir, image, config_dir):
    session = VLMSession(str(tiny_smolvlm_dir), dtype="float32", batch_size=1)
    positions = [(x, 48.0) for x in (20, 40, 60, 80)]
    from astropy.table import Table

    request = Request(image=image, send="catalog", catalog=Table({"x": [p[0] for p in positions],
                                                                   "y": [p[1] for p in positions]}), size=16,
                      labels=["a", "b"])

    def progress(done, total):
        if done == 1:
            session.cancel()

    with pytest.raises(OperationCancelled) as cancelled:
        session.run(request, progress=progress)
    assert len(cancelled.value.results) == 1 and session.history == cancelled.value.results


def test_a_request_naming_a_model_switches_to_it_and_errors_keep_history(tiny_smolvlm_dir, image, config_dir):
    session = VLMSession(str(tiny_smolvlm_dir), dtype="float32")
    with pytest.raises(AstroVLMError, match="does not exist"):
        session.run(Request(image=image, labels=["a", "b"], model=str(tiny_smolvlm_dir / "missing")))
    assert session.model.endswith("missing") and not session.is_loaded and session.history == []
    worker = threading.Thread(target=session.cancel)  # cancel from another thread is harmless
    worker.start()
    worker.join()


def test_tests_never_touch_the_users_configuration(isolated_config):
    from pathlib import Path

    from glue_astrovlm.session import _config_file

    assert Path(_config_file()).is_relative_to(isolated_config)
    assert not Path(_config_file()).is_relative_to(Path.home() / ".config")


def test_warm_up_loads_a_model_on_this_machine_ahead_of_the_first_task(tiny_smolvlm_dir, image, config_dir,
                                                                       monkeypatch):
    from glue_astrovlm.models import loading

    session = VLMSession(str(tiny_smolvlm_dir), dtype="float32", remember=False)
    session.warm_up(preload=True).result(timeout=300)
    assert session.is_loaded
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the first task loaded the model again"))
    result, = session.run(Request(image=image, send="position", position=(48, 48), size=32, labels=["jet", "blob"]))
    assert result.label in ("jet", "blob") and session.history == [result]  # the warm-up pass left no result


def test_warm_up_never_downloads_nor_fails_for_a_model_that_is_not_here(config_dir, monkeypatch, tmp_path):
    import huggingface_hub.constants

    from glue_astrovlm.models import loading

    assert str(huggingface_hub.constants.HF_HUB_CACHE).startswith(str(__import__("os").environ["HF_HOME"]))
    monkeypatch.setattr(loading, "_hub_reachable", lambda: pytest.fail("the warm-up went to the network"))
    for spec in ("nobody/not-a-model-here", str(tmp_path / "no-such-folder"), "http://127.0.0.1:9/v1"):
        session = VLMSession(spec, remember=False)
        assert session.warm_up(preload=True).result(timeout=300) is None and not session.is_loaded
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    session = VLMSession(str(broken), remember=False)
    session.warm_up(preload=True).result(timeout=300)  # the failure waits for the user's own run
    assert not session.is_loaded
    with pytest.raises(AstroVLMError):
        session.run(Request(image=np.ones((32, 32)), send="position", position=(16, 16), size=16, labels=["a", "b"]))
