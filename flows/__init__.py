"""Stream-based model serving on Bytewax: a data stream scored by models that arrive on a model stream."""

import os

# TensorFlow logs a screenful at import; users see only warnings and errors unless they ask for more.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
