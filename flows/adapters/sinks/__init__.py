"""Where results and model events go besides Kafka: the console, and JSON-lines files."""
