"""Wait until the broker answers and the flow's topics exist (init step of the flow and the publishers).

Uses the flow's own settings (SERVING_* variables), so it reaches the broker the way the flow does.
"""

import sys
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from flows.adapters.kafka.config import client_config
from flows.runtime.settings import Settings

kafka = Settings.from_environment().kafka
admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, **client_config(kafka, {})})
wanted = {
    kafka.data_topic,
    kafka.models_topic,
    kafka.results_topic,
    kafka.dead_letters_topic,
    *([kafka.events_topic] if kafka.events_topic else []),
    *([kafka.challenger_topic] if kafka.challenger_topic else []),
    *([kafka.explanations_topic] if kafka.explanations_topic else []),
    *([kafka.answered_topic] if kafka.exactly_once else []),
}
while True:
    try:
        missing = wanted - set(admin.list_topics(timeout=5).topics)
    except KafkaException as error:  # the broker is not up yet
        print(f"wait_for_topics: {kafka.bootstrap_servers}: {error}", flush=True)
    else:
        if not missing:
            print(f"wait_for_topics: topics ready: {sorted(wanted)}", flush=True)
            sys.exit(0)
        print(f"wait_for_topics: waiting for topics {sorted(missing)}", flush=True)
    time.sleep(3)
