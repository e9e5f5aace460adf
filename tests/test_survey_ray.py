"""The Ray engine of survey runs (issue 15), on a local Ray with 2 CPUs (as on CI), real FIRST FITS and the
tiny SmolVLM: the same table as the local engine, and every row exactly once when a worker dies."""

import numpy as np
import pytest

from .survey_helpers import BAD_ROWS, LABELS, make_survey

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")

SIZE = 32
OPTIONS = dict(
    labels=LABELS,
    size=SIZE,
    block_rows=8,
    shard_rows=16,
    progress=False,
    load_options={"dtype": "float32", "device": "cpu"},
)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module (starting it is the slow part): 2 CPUs, like CI."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def survey(tmp_path_factory, fits_dir):
    return make_survey(tmp_path_factory.mktemp("survey-ray"), fits_dir)


@pytest.fixture(scope="module")
def local_table(survey, tiny_smolvlm_dir, tmp_path_factory):
    from glue_astrovlm.survey import tag_catalog

    run = tag_catalog(
        survey[0],
        tmp_path_factory.mktemp("local") / "tags",
        model=str(tiny_smolvlm_dir),
        engine="local",
        **OPTIONS,
    )
    return run.table()


def _same(table, reference):
    assert list(table["row"]) == list(reference["row"])
    assert list(table["source_id"]) == list(reference["source_id"])
    assert list(table["label"]) == list(reference["label"])
    for column in ("p_FRI", "p_FRII"):
        assert np.allclose(table[column], reference[column], atol=1e-5, rtol=0)
    assert list(table["bbox"]) == list(reference["bbox"])


def test_ray_gives_the_local_table_row_for_row(ray_cluster, survey, tiny_smolvlm_dir, local_table, tmp_path):
    from glue_astrovlm.catalogs import read_table
    from glue_astrovlm.survey import tag_catalog

    catalog, good = survey
    run = tag_catalog(catalog, tmp_path / "tags", model=str(tiny_smolvlm_dir), engine="ray", **OPTIONS)
    assert run.complete and (run.done, run.failed) == (good, len(BAD_ROWS))
    _same(run.table(), local_table)
    failed = read_table(run.failed_path)
    assert sorted(failed["source_id"]) == sorted(BAD_ROWS)
    assert ray.is_initialized()  # a cluster the caller started is left running


def test_a_worker_that_dies_mid_run_still_yields_every_row_once(
    ray_cluster, survey, tiny_smolvlm_dir, local_table, tmp_path
):
    from glue_astrovlm.survey import tag_catalog

    catalog, good = survey
    marker = tmp_path / "actor-died"
    run = tag_catalog(
        catalog,
        tmp_path / "tags",
        model=str(tiny_smolvlm_dir),
        engine="ray",
        _ray_fault={"exit_after": 1, "marker": str(marker)},
        **OPTIONS,
    )
    assert marker.exists()  # the first actor exited (os._exit) after its first batch; Ray restarted it
    assert run.complete and run.done == good and run.failed == len(BAD_ROWS)
    table = run.table()
    assert len(table) == len(set(table["row"])) == good
    _same(table, local_table)
