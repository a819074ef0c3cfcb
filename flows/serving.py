"""The main job: `python -m bytewax.run flows.serving` (settings: SERVING_* environment variables)."""

import logging

from flows import shutdown
from flows.app import build_flow
from flows.settings import Settings

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
shutdown.install()
flow = build_flow(Settings())
