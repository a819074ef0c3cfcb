"""Where records and models come from when Kafka is not configured: seeded generators, and the wrapper that
stops any source cleanly on SIGTERM."""
