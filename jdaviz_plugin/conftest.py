"""The jdaviz plugin's tests use the project's shared fixtures (real data, tiny real models) from
``tests/conftest.py``; pytest only applies a conftest to the folder it sits in, so they are
re-exported here."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_astrovlm_shared_fixtures",
                                               Path(__file__).resolve().parents[1] / "tests" / "conftest.py")
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

isolated_config = _shared.isolated_config
shared_data = _shared.shared_data
fits_dir = _shared.fits_dir
tiny_smolvlm_dir = _shared.tiny_smolvlm_dir
