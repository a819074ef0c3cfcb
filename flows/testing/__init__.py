"""What the tests and the benchmarks start on loopback, shipped with the package (as `bytewax.testing` is).

A Kafka-protocol broker (`local_broker`), model servers (`local_servers`: the TensorFlow Serving stand-in
in `tfserving_double`, Seldon MLServer with the runtime in `mlserver_runtime`), an OTLP receiver
(`otlp_receiver`), and free loopback ports (`loopback`). Nothing in the serving flow imports this package;
its servers need the test extra (`pip install -e '.[test]'`) where they use more than the flow's own
dependencies.
"""
