"""Scorers: one module per kind of model, behind the core's interface (`Scorer`) and factory (`build_scorer`,
both in `flows.core.scorer`).

Importing this package (or any module in it) registers every scorer kind with the factory; the runtime
does (`flows.runtime.app`), and the names are re-exported here for the tools and tests.
"""

from flows.adapters.scorers import (
    onnx_model,  # noqa: F401  (registers ONNX)
    open_inference,  # noqa: F401  (registers OPENINFERENCE)
    pmml_model,  # noqa: F401  (registers PMML; its evaluator is imported with the first PMML model)
    tensorflow_saved,  # noqa: F401  (registers TENSORFLOWSAVED)
    tensorflow_serving,  # noqa: F401  (registers TENSORFLOWSERVING)
)
from flows.core.scorer import InputBounds, ModelLoadError, Scorer, ScorerUnavailable, build_scorer
from flows.core.scorer_cache import ScorerCache

__all__ = ["InputBounds", "ModelLoadError", "Scorer", "ScorerCache", "ScorerUnavailable", "build_scorer"]
