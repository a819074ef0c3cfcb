r"""SavedModel fixtures, good and hostile, for testing the graph check and the test-scoring.

Each ``*_model(target)`` writes a SavedModel into ``target`` (a ``pathlib.Path`` that must not exist
yet or be an empty directory) and returns ``target``. Unless the flaw is the point, the model has the
shipped recommender's interface: signature ``serving_default``, float32 inputs ``users`` and
``products`` of shape [N, 1], output ``predictions`` of shape [N, 1].

Hostile models that touch files use paths inside ``target.parent`` (put ``target`` in a temporary
directory): ``write_file_model`` writes :data:`WRITTEN_FILE` there when its signature runs,
``tf1_main_op_model`` writes :data:`MAIN_OP_FILE` there when a TF1-style loader loads it, and
``read_file_model`` reads :data:`READ_FILE` from there, ``save_v2_model`` writes checkpoint files
:data:`SAVED_PREFIX`\* there, ``print_to_file_model`` appends to :data:`PRINTED_FILE` there, and
``matching_files_model`` lists that directory. Only *exporting* happens here; nothing
hostile runs. TensorFlow is imported lazily (on the first call).
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np

WRITTEN_FILE = "written_by_hostile_model.txt"
MAIN_OP_FILE = "written_by_main_op.txt"
READ_FILE = "secret.txt"
SAVED_PREFIX = "saved_by_hostile_model"
PRINTED_FILE = "printed_by_hostile_model.txt"


def _tf():
    from flows.adapters.scorers.tensorflow_runtime import tensorflow

    return tensorflow()


def _float_signature(tf, dtype=None):
    dtype = dtype or tf.float32
    return [
        tf.TensorSpec(shape=(None, 1), dtype=dtype, name="users"),
        tf.TensorSpec(shape=(None, 1), dtype=dtype, name="products"),
    ]


def _check_target(target: pathlib.Path) -> pathlib.Path:
    target = pathlib.Path(target)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty")
    return target


def _export(target: pathlib.Path, serve_fn, dtype=None) -> pathlib.Path:
    """Export a tf.Module with one weight and `serve_fn(module, users, products) -> tensor`."""
    tf = _tf()
    target = _check_target(target)

    class Model(tf.Module):  # type: ignore[name-defined]  # a base from TensorFlow, imported at run time
        def __init__(self) -> None:
            super().__init__(name="fixture")
            self.w = tf.Variable([[0.3], [-0.2]], dtype=tf.float32, name="w")
            self.b = tf.Variable([0.1], dtype=tf.float32, name="b")

        @tf.function(input_signature=_float_signature(tf, dtype))
        def serve(self, users, products):
            return {"predictions": serve_fn(self, users, products)}

    module = Model()
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    return target


def _logits(tf, module, users, products):
    """A small dense layer over (users, products) scaled down: [N, 1] float32."""
    features = tf.concat([tf.cast(users, tf.float32), tf.cast(products, tf.float32)], axis=1) / 1000.0
    return tf.matmul(features, module.w) + module.b


# -- well behaved ------------------------------------------------------------------------------------


def well_behaved_model(target: pathlib.Path) -> pathlib.Path:
    """Correct signature; predictions = sigmoid(dense(users, products)) in [0, 1]."""
    tf = _tf()
    return _export(target, lambda m, u, p: tf.sigmoid(_logits(tf, m, u, p)))


# -- hostile at the graph level (must be refused by graph_ops.inspect_saved_model) --------------------


def published_copy(shipped: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    """A shipped SavedModel as a user would publish it, with a file of notes beside it: the same graph and
    weights, but not byte for byte a shipped model, so admission tries it
    (`flows.core.admission.tree_digest`)."""
    shutil.copytree(shipped, target)
    (target / "assets").mkdir(exist_ok=True)
    (target / "assets" / "NOTES.txt").write_text("published by a user\n")
    return target


def write_file_model(target: pathlib.Path) -> pathlib.Path:
    """Serving writes ``target.parent / WRITTEN_FILE`` (tf.io.write_file, path a constant)."""
    tf = _tf()
    path = str(pathlib.Path(target).resolve().parent / WRITTEN_FILE)

    def serve(m, u, p):
        write = tf.io.write_file(path, tf.strings.as_string(tf.reduce_sum(u)))
        with tf.control_dependencies([write]):
            return tf.sigmoid(_logits(tf, m, u, p))

    return _export(target, serve)


def read_file_model(target: pathlib.Path) -> pathlib.Path:
    """Serving returns the bytes of ``target.parent / READ_FILE`` (/255) as the probabilities.

    Row i gets byte i (cycled). Fails at serving time if the file does not exist.
    """
    tf = _tf()
    path = str(pathlib.Path(target).resolve().parent / READ_FILE)

    def serve(m, u, p):
        raw = tf.io.decode_raw(tf.io.read_file(path), tf.uint8)
        n = tf.shape(u)[0]
        index = tf.math.floormod(tf.range(n), tf.maximum(tf.size(raw), 1))
        leaked = tf.cast(tf.gather(raw, index), tf.float32) / 255.0
        return tf.reshape(leaked, [-1, 1]) + 0.0 * _logits(tf, m, u, p)

    return _export(target, serve)


def py_function_model(target: pathlib.Path) -> pathlib.Path:
    """Serving calls tf.py_function (an EagerPyFunc op: runs whatever Python the loader registered)."""
    tf = _tf()

    def serve(m, u, p):
        out = tf.py_function(lambda x: x * 0.5, [tf.sigmoid(_logits(tf, m, u, p))], Tout=tf.float32)
        return tf.reshape(out, [-1, 1])

    return _export(target, serve)


def save_v2_model(target: pathlib.Path) -> pathlib.Path:
    """Serving writes a checkpoint to ``target.parent / SAVED_PREFIX*`` with a raw SaveV2 op.

    Checks that checkpoint ops are allowed only on the saver's own paths, not anywhere.
    """
    tf = _tf()
    prefix = str(pathlib.Path(target).resolve().parent / SAVED_PREFIX)

    def serve(m, u, p):
        save = tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["users"], shape_and_slices=[""], tensors=[u])
        with tf.control_dependencies([save]):
            return tf.sigmoid(_logits(tf, m, u, p))

    return _export(target, serve)


def print_to_file_model(target: pathlib.Path) -> pathlib.Path:
    """Serving appends the inputs to ``target.parent / PRINTED_FILE`` (tf.print, file:// stream)."""
    tf = _tf()
    stream = "file://" + str(pathlib.Path(target).resolve().parent / PRINTED_FILE)

    def serve(m, u, p):
        printed = tf.print(u, p, output_stream=stream)
        with tf.control_dependencies([printed]):
            return tf.sigmoid(_logits(tf, m, u, p))

    return _export(target, serve)


def matching_files_model(target: pathlib.Path) -> pathlib.Path:
    """Serving globs ``target.parent / '*'`` and leaks the number of matches into the scores."""
    tf = _tf()
    pattern = str(pathlib.Path(target).resolve().parent / "*")

    def serve(m, u, p):
        count = tf.cast(tf.size(tf.io.matching_files(pattern)), tf.float32)
        return tf.sigmoid(_logits(tf, m, u, p)) * 0.0 + count / 100.0

    return _export(target, serve)


def tf1_main_op_model(target: pathlib.Path) -> pathlib.Path:
    """TF1 SavedModel (tf.compat.v1 builder) whose main_op writes ``target.parent / MAIN_OP_FILE``.

    The serving signature itself is harmless; the file is written when a TF1-style loader
    (tf.compat.v1.saved_model.load, tf.saved_model.load via load_v1_in_v2, TensorFlow Serving) loads it.
    """
    tf = _tf()
    v1 = tf.compat.v1
    target = _check_target(target)
    if target.exists():
        target.rmdir()  # the v1 builder refuses an existing directory
    path = str(target.resolve().parent / MAIN_OP_FILE)
    graph = tf.Graph()
    with graph.as_default():
        users = v1.placeholder(tf.float32, shape=(None, 1), name="users")
        products = v1.placeholder(tf.float32, shape=(None, 1), name="products")
        w = v1.get_variable("w", initializer=tf.constant([[0.3], [-0.2]]), use_resource=True)
        logits = tf.matmul(tf.concat([users, products], axis=1) / 1000.0, w)
        predictions = tf.sigmoid(logits, name="predictions")
        main_op = tf.group(
            v1.local_variables_initializer(),
            v1.tables_initializer(),
            tf.io.write_file(path, "main_op ran at load"),
            name="main_op",
        )
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(target))
            signature = v1.saved_model.predict_signature_def(
                inputs={"users": users, "products": products}, outputs={"predictions": predictions}
            )
            builder.add_meta_graph_and_variables(
                session,
                [v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": signature},
                main_op=main_op,
            )
            builder.save()
    return target


# -- graph-clean but wrong (caught by test-scoring, not by the graph check) ---------------------------


def int64_inputs_model(target: pathlib.Path) -> pathlib.Path:
    """Inputs ``users``/``products`` are int64 instead of float32 (outputs fine)."""
    tf = _tf()
    return _export(target, lambda m, u, p: tf.sigmoid(_logits(tf, m, u, p)), dtype=tf.int64)


def double_outputs_model(target: pathlib.Path) -> pathlib.Path:
    """``predictions`` has 2N rows for N inputs."""
    tf = _tf()

    def serve(m, u, p):
        scores = tf.sigmoid(_logits(tf, m, u, p))
        return tf.concat([scores, scores], axis=0)

    return _export(target, serve)


def short_outputs_model(target: pathlib.Path) -> pathlib.Path:
    """``predictions`` has N-1 rows for N inputs (0 rows for 1 input)."""
    tf = _tf()
    return _export(target, lambda m, u, p: tf.sigmoid(_logits(tf, m, u, p))[1:])


def nan_model(target: pathlib.Path) -> pathlib.Path:
    """``predictions`` are all NaN (right shape and dtype)."""
    tf = _tf()
    return _export(target, lambda m, u, p: tf.fill(tf.shape(_logits(tf, m, u, p)), float("nan")))


def huge_scores_model(target: pathlib.Path) -> pathlib.Path:
    """``predictions`` are ~1e30 (right shape and dtype, finite, far outside [0, 1])."""
    tf = _tf()
    return _export(target, lambda m, u, p: 1e30 * (1.0 + tf.sigmoid(_logits(tf, m, u, p))))


REFUSED_BY_GRAPH_CHECK = {
    "write_file_model": write_file_model,
    "read_file_model": read_file_model,
    "py_function_model": py_function_model,
    "tf1_main_op_model": tf1_main_op_model,
    "save_v2_model": save_v2_model,
    "print_to_file_model": print_to_file_model,
    "matching_files_model": matching_files_model,
}
ACCEPTED_BY_GRAPH_CHECK = {
    "well_behaved_model": well_behaved_model,
    "int64_inputs_model": int64_inputs_model,
    "double_outputs_model": double_outputs_model,
    "short_outputs_model": short_outputs_model,
    "nan_model": nan_model,
    "huge_scores_model": huge_scores_model,
}
# -- graph-clean and right for small batches (caught by the trial, not by the graph check or the probe) --


def grows_with_the_batch_model(target: pathlib.Path) -> pathlib.Path:
    """users [N, 1] + transpose(products) [1, N] -> [N, N] -> mean per user: 257 pairs cost 264 KB, the
    flow's largest batch (50,000 pairs) 10 GB."""
    tf = _tf()

    def serve(m, u, p):
        square = u + tf.transpose(p)
        return tf.sigmoid(tf.reduce_mean(square, axis=1, keepdims=True) / 1e7 + _logits(tf, m, u, p))

    return _export(target, serve)


def slow_per_pair_model(target: pathlib.Path) -> pathlib.Path:
    """120 dense layers of 512 units per pair (63 MFLOP a pair): the probe's 257 pairs take about a second
    on a loaded 2-core machine, the flow's largest batch (50,000 pairs, 3 TFLOP) a minute or more."""
    tf = _tf()
    square = tf.constant(np.random.default_rng(7).normal(0, 0.01, (512, 512)).astype(np.float32))

    def serve(m, u, p):
        hidden = tf.matmul(tf.concat([u, p], axis=1) / 1000.0, tf.ones([2, 512]))
        for _ in range(120):
            hidden = tf.matmul(hidden, square)
        return tf.sigmoid(tf.reduce_mean(hidden, axis=1, keepdims=True) + _logits(tf, m, u, p))

    return _export(target, serve)


# Each with a pattern its refusal must match: the limit of the trial in the admission child that stopped it
# while it scored the largest batch. The growing one meets the resident-memory watchdog within a second or
# two, or, on a machine loaded enough to fill 1.5 GiB slower than that, the trial's clock; a machine fast
# enough to finish the slow one's largest batch within the trial's clock refuses it for the call's time.
REFUSED_BY_THE_TRIAL = {
    "grows_with_the_batch_model": (
        grows_with_the_batch_model,
        (
            r"\(SERVING_MODEL_TRIAL_MEMORY\) while scoring 50,000 pairs"
            r"|scoring 50,000 pairs \(SERVING_MODEL_UNPACK_TIMEOUT\)"
        ),
    ),
    "slow_per_pair_model": (
        slow_per_pair_model,
        r"scoring 50,000 pairs.*\(SERVING_MODEL_(UNPACK_TIMEOUT|MAX_CALL_SECONDS)\)",
    ),
}
ALL_MODELS = {
    **REFUSED_BY_GRAPH_CHECK,
    **ACCEPTED_BY_GRAPH_CHECK,
    **{name: make for name, (make, _) in REFUSED_BY_THE_TRIAL.items()},
}
