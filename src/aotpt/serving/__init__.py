"""Inference with compiled AoT tables: one frozen backbone, many tasks, one forward per mixed batch.

`MultiTaskPredictor` (predictor.py) runs mixed-task batches; `sources.py`
holds where the tables' rows live (the serving modes). Nothing here imports
Lightning.
"""

from aotpt.serving.predictor import DTYPES, MultiTaskPredictor
from aotpt.serving.sources import MODES, build_source

__all__ = ["DTYPES", "MODES", "MultiTaskPredictor", "build_source"]
