"""The wire format: Avro encoding of the records (schemas in the top-level schemas/), polls decoded at
once."""
