"""The main job: `python -m bytewax.run flows.serving` (settings: SERVING_* environment variables)."""

import logging

from flows.adapters.scorers.tensorflow_runtime import show_start_up_output
from flows.core.context import ServingContext
from flows.core.errors import ConfigurationError
from flows.runtime import shutdown
from flows.runtime.app import build_flow, freeze_what_start_built
from flows.runtime.observability import start_observability
from flows.runtime.preflight import start_problems
from flows.runtime.recovery_store import RecoveryStoreError, hold_recovery_store
from flows.runtime.settings import Settings, unknown_variables

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("flows").setLevel(logging.INFO)  # our start-up lines; libraries stay at WARNING
shutdown.install()
try:  # before TensorFlow and Bytewax: a refused store or setting fails in a second, before anything opens
    recovery_lock = hold_recovery_store()  # held while the process lives; the kernel drops it at its end
    settings = Settings.from_environment()
except RecoveryStoreError as refused:
    logging.getLogger("flows.serving").error("recovery store refused: %s", refused)
    raise SystemExit(2) from None
except ValueError as wrong:  # a setting, named with its variable
    logging.getLogger("flows.serving").error("cannot start: %s", wrong)
    raise SystemExit(2) from None
problems = start_problems(settings)
for problem in problems:
    logging.getLogger("flows.serving").error("cannot start: %s", problem)
if problems:
    raise SystemExit(2)
shutdown.set_drain_timeout(settings.flow.drain_timeout)
for name in unknown_variables():
    logging.getLogger("flows.serving").warning("%s is set, but no setting of this version reads it", name)
# TensorFlow is imported with the first TensorFlow model, on its load thread (`tensorflow_runtime`).
show_start_up_output(settings.output.tf_verbose)
try:  # what the settings name and only the build reads (a key file, an exporter): still one line
    context = ServingContext.create(settings.admission)
    observability = start_observability(settings, context)
    flow = build_flow(settings, context)
except ConfigurationError as wrong:
    logging.getLogger("flows.serving").error("cannot start: %s", wrong)
    raise SystemExit(2) from None
freeze_what_start_built()
