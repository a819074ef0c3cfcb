"""Wait until the broker answers and the flow's topics exist (init step of the flow and the publishers).

Uses the flow's own settings (SERVING_* variables), so it reaches the broker the way the flow does.
"""

import sys
import time

from confluent_kafka.admin import AdminClient

from flows.kafka.config import client_config
from flows.settings import Settings

settings = Settings()
admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers, **client_config(settings, {})})
wanted = {
    settings.kafka_data_topic,
    settings.kafka_models_topic,
    settings.kafka_results_topic,
    settings.kafka_dead_letters_topic,
    *([settings.kafka_events_topic] if settings.kafka_events_topic else []),
    *([settings.kafka_challenger_topic] if settings.kafka_challenger_topic else []),
}
while True:
    try:
        missing = wanted - set(admin.list_topics(timeout=5).topics)
    except Exception as error:  # the broker is not up yet
        print(f"wait_for_topics: {settings.kafka_bootstrap_servers}: {error}", flush=True)
    else:
        if not missing:
            print(f"wait_for_topics: topics ready: {sorted(wanted)}", flush=True)
            sys.exit(0)
        print(f"wait_for_topics: waiting for topics {sorted(missing)}", flush=True)
    time.sleep(3)
