"""The main job: `python -m bytewax.run flows.serving` (settings: SERVING_* environment variables)."""

import logging

from flows import shutdown
from flows.app import build_flow
from flows.observability import start_observability
from flows.settings import Settings
from flows.tensorflow_runtime import tensorflow

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("flows").setLevel(logging.INFO)  # our start-up lines; libraries stay at WARNING
shutdown.install()
# Import TensorFlow here, in the main thread, before Bytewax starts its workers: imported by a worker while
# the others poll Kafka, it took 10 s (they hold the GIL) and once crashed the process (SIGSEGV).
tensorflow()
settings = Settings()
observability = start_observability(settings)
flow = build_flow(settings)
