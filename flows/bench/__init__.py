"""Benchmarks of the serving flow: `python -m flows.bench --scenario SCENARIO --records N [--rate R]`
(or `serving-bench`).

Prints, as its last line, one JSON object: scenario, records, seconds, records_per_s, p50_ms, p99_ms, plus
the run's parameters. Scenarios:
- embedded: the dataflow in this process on generated records; latency from the moment the source emitted
  a record to the moment its result reached the sink.
  With --bad-every N, every N-th record has a user no model can take (2**63-1): what bad records cost.
- tfserving-grpc, tfserving-rest, v2-grpc, v2-rest: as embedded, but scoring with a model server on
  this machine (the TensorFlow Serving stand-in of flows.testing, or Seldon MLServer) over gRPC or REST; the
  line adds the per-request latency (call_p50_ms, call_p99_ms) and the number of requests.
  tfserving-grpcs and tfserving-https: the same stand-in over TLS, with a throwaway CA (needs trustme).
- swap: as embedded at an offered --rate, with v1 serving and v2 published --swap-after seconds in; the
  line adds the largest gap between consecutive results (largest_gap_ms, and within the swap:
  swap_gap_ms) and the time from v2's arrival to the first record it scored (swap_ms).
- kafka-embedded: through a Kafka-protocol broker (started locally unless --bootstrap-servers names one);
  latency from the data message's produce timestamp to the result message's; throughput from the first
  result message to the last.
- call-cost: one model's scorer alone (--model-version 1, its ONNX twin 1-onnx, the PMML 1-pmml), the median
  time of a call on 1, 100 and 1,000 pairs and the resident memory after warm-up (flows.bench.call_cost).
  docs/benchmarks/formats.sh runs it and embedded for the three formats, interleaved.
- explain-cost: what explaining costs per explained record, with 1 and 16 records of a 1,000-record batch
  asking, for a shipped model in process (--model-version) or behind a local server (--via tfserving-grpc,
  v2-rest, ...: the black-box split over the network); see flows.bench.explain_cost.
- kafka-baseline: the same broker and data through a hand-written batched confluent-kafka loop (consume 500,
  decode, one model call, encode, produce, commit): what a user would write instead of this project.
The model is loaded before the clock starts, so the figures are steady-state scoring, not TensorFlow's
start-up.
"""
