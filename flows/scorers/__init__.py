"""Scorers: one interface (`Scorer`), one factory (`build_scorer`), one module per kind of model.

Importing this package registers every scorer kind with the factory.
"""

from flows.scorers import (
    open_inference,  # noqa: F401  (registers OPENINFERENCE)
    tensorflow_saved,  # noqa: F401  (registers TENSORFLOWSAVED)
    tensorflow_serving,  # noqa: F401  (registers TENSORFLOWSERVING)
)
from flows.scorers.base import InputBounds, ModelLoadError, Scorer, ScorerUnavailable, build_scorer
from flows.scorers.cache import ScorerCache

__all__ = ["InputBounds", "ModelLoadError", "Scorer", "ScorerCache", "ScorerUnavailable", "build_scorer"]
