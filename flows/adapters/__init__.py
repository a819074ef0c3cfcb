"""Adapters between the core and the world: Kafka, sources, sinks, scorers (model runtimes and servers),
the /state endpoint."""
