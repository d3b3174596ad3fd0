"""Inference with compiled AoT tables: one frozen backbone, many tasks, one forward per mixed batch.

`MultiTaskPredictor` (predictor.py) runs mixed-task batches; `sources.py`
holds where the tables' rows live (the serving modes, `cache.py` their hot
rows); `server.py` puts it behind an HTTP endpoint (LitServe). Nothing here
imports Lightning.
"""

from aotpt.serving.predictor import BARE, DTYPES, MultiTaskPredictor
from aotpt.serving.sources import MODES, build_source, empty_source

__all__ = ["BARE", "DTYPES", "MODES", "MultiTaskPredictor", "build_source", "empty_source"]
