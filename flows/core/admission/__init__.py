"""Model admission: what a model message must pass before the flow serves it.

A model message comes from a topic anyone with producer rights can write to, and a SavedModel is a
program. Admission bounds what judging one may cost (size, time, memory, disk) before paying it, and runs
the costly parts away from the dataflow's step: cheap descriptor checks (`descriptor_checks`), signature
verification (`signing`), unpacking and graph inspection in a child process with resource limits
(`unpack`, `unpack_child`, `graph`), and test-scoring before acceptance (`probe`). The limits come from
one `AdmissionPolicy` (`policy`), built from the `SERVING_MODEL_*` settings.

This package must stay importable without TensorFlow: the unpacking child imports it.
"""
