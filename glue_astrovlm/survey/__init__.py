"""Survey scale: tag every row of a catalogue that spans many image files, in one process or on Ray.

    from glue_astrovlm.survey import tag_catalog
    run = tag_catalog("survey.parquet", "tags", preset="radio-morphology", engine="ray")

See `tag_catalog` and docs/survey.md. Importing this package imports no Ray; only
``engine='ray'`` does (`glue_astrovlm.survey.ray_engine`).
"""

from .catalog import SurveyCatalog, read_survey, work_blocks
from .engine import ENGINES, SurveyRun, tag_catalog
from .outputs import SurveyOutputs

__all__ = [
    "tag_catalog",
    "SurveyRun",
    "ENGINES",
    "read_survey",
    "SurveyCatalog",
    "work_blocks",
    "SurveyOutputs",
]
