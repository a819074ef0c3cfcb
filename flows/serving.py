"""The main job: `python -m bytewax.run flows.serving` (settings: SERVING_* environment variables)."""

import logging

from flows import shutdown
from flows.admission.policy import admission_policy
from flows.app import build_flow
from flows.context import ServingContext
from flows.observability.setup import start_observability
from flows.settings import Settings
from flows.tensorflow_runtime import tensorflow

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("flows").setLevel(logging.INFO)  # our start-up lines; libraries stay at WARNING
shutdown.install()
# Import TensorFlow here, in the main thread, before Bytewax starts its workers: imported by a worker while
# the others poll Kafka, it took 10 s (they hold the GIL) and once crashed the process (SIGSEGV).
tensorflow()
settings = Settings()
context = ServingContext.create(admission_policy(settings))
observability = start_observability(settings, context)
flow = build_flow(settings, context)
