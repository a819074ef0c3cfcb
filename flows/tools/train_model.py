"""Train the recommender and export it as a SavedModel, an ONNX model or a PMML document.

Usage::

    serving-train-model --version 3                  # or python -m flows.tools.train_model --version 3
    serving-train-model --version 3 --format onnx    # its ONNX twin: models/recommender/3-onnx/model.onnx
    serving-train-model --version 1 --format onnx --from-saved-model models/recommender/1
    serving-train-model --version 1 --format pmml    # gradient-boosted trees: models/recommender/1-pmml/

writes ``models/recommender/3/`` next to the shipped versions (``--out DIR`` elsewhere), where
``SERVING_MODEL_VERSIONS=1,2,3`` finds it. With ``--format onnx`` the same training is written as
``VERSION-onnx/model.onnx`` (``flows.tools.onnx_export``); ``--from-saved-model`` converts the weights of
a SavedModel this tool wrote, without training (the shipped ``1-onnx`` and ``2-onnx`` were made so). The data
is synthetic purchase history generated from the version number, so a given version always trains on the same
data, and two versions give visibly different scores for the same user and product.

``--format pmml`` trains another kind of model on the same data: gradient-boosted regression trees
(scikit-learn, 100 trees of depth 3) over the raw ids, written by ``flows.tools.pmml_export`` (the
``[pmml-train]`` extra; no TensorFlow). Trees split the ids into ranges, and neighbouring ids share no taste,
so it ranks a record's products little better than chance: the tool prints its top-5 agreement with the
version's ONNX twin, as a shadow challenger's report would. The shipped ``1-pmml`` is there to show and
measure a PMML model in the flow (a cross-format challenger, its cost), not as a better recommender.

The architecture is the original design's: an embedding for users and one for products, concatenated,
dropout, a 50-unit relu layer, dropout, one sigmoid output (a probability in [0, 1]); adam, mean squared
logarithmic error, batch 64, 3 epochs. The exported ``serving_default`` signature takes ``users`` and
``products`` (float32, [N, 1]) and returns ``predictions`` ([N, 1]), which is what ``flows.adapters.scorers``
and TensorFlow Serving expect.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np

from flows.core.model_formats import ONNX, ONNX_MODEL_FILE, PMML, PMML_MODEL_FILE, SAVED_MODEL
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.tools.onnx_export import saved_model_weights, write_onnx

USERS = 1000
PRODUCTS = 300
EMBEDDING_SIZE = 50
HIDDEN_UNITS = 50
DROPOUT = 0.2
BATCH_SIZE = 64
EPOCHS = 3
LATENT_TASTES = 8
PURCHASES_PER_USER = 60
TREES = 100
TREE_DEPTH = 3
AGREEMENT_RECORDS = 3_000
AGREEMENT_TOP_K = 5


def synthetic_purchases(version: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (users, products, ratings) for the given version.

    Each user and product has a hidden taste vector; a purchase's rating is the sigmoid of their
    affinity plus noise, in [0, 1]. The version seeds the generator, so versions differ in their data
    and so in their scores.
    """
    rng = np.random.default_rng(version)
    user_tastes = rng.normal(size=(USERS, LATENT_TASTES))
    product_tastes = rng.normal(size=(PRODUCTS, LATENT_TASTES))
    users = np.repeat(np.arange(USERS), PURCHASES_PER_USER)
    products = rng.integers(0, PRODUCTS, size=users.size)
    affinity = np.einsum("ij,ij->i", user_tastes[users], product_tastes[products]) / np.sqrt(LATENT_TASTES)
    ratings = 1.0 / (1.0 + np.exp(-2.0 * affinity)) + rng.normal(scale=0.05, size=users.size)
    return (
        users.astype(np.float32).reshape(-1, 1),
        products.astype(np.float32).reshape(-1, 1),
        np.clip(ratings, 0.0, 1.0).astype(np.float32).reshape(-1, 1),
    )


def build_model():  # -> keras.Model (keras is imported lazily: it is slow to import)
    """The original DeepCollaborativeFiltering network."""
    import keras

    users = keras.Input(shape=(1,), name="users", dtype="float32")
    products = keras.Input(shape=(1,), name="products", dtype="float32")
    user_vector = keras.layers.Flatten()(keras.layers.Embedding(USERS, EMBEDDING_SIZE)(users))
    product_vector = keras.layers.Flatten()(keras.layers.Embedding(PRODUCTS, EMBEDDING_SIZE)(products))
    hidden = keras.layers.Concatenate()([user_vector, product_vector])
    hidden = keras.layers.Dropout(DROPOUT)(hidden)
    hidden = keras.layers.Dense(HIDDEN_UNITS, activation="relu")(hidden)
    hidden = keras.layers.Dropout(DROPOUT)(hidden)
    # A sigmoid output: the scores are probabilities in [0, 1], the range admission checks them against.
    predictions = keras.layers.Dense(1, activation="sigmoid", name="predictions")(hidden)
    model = keras.Model(inputs=[users, products], outputs=predictions, name="recommender")
    model.compile(optimizer="adam", loss="mean_squared_logarithmic_error")
    return model


def export_saved_model(model, directory: Path) -> None:
    """Write `model` as a SavedModel with the `serving_default` signature the serving flow expects.

    Only the network's weights are saved (not the optimizer's), once each, to keep the shipped
    versions small.
    """
    import tensorflow as tf

    class Serving(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="recommender")
            self.weights = list(model.weights)

        @tf.function(
            input_signature=[
                tf.TensorSpec(shape=(None, 1), dtype=tf.float32, name="users"),
                tf.TensorSpec(shape=(None, 1), dtype=tf.float32, name="products"),
            ]
        )
        def serve(self, users, products):
            return {"predictions": model([users, products], training=False)}

    serving = Serving()
    tf.saved_model.save(serving, str(directory), signatures={"serving_default": serving.serve})


def train(version: int):  # -> keras.Model
    """Train version `version` deterministically."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(version)
    tf.config.experimental.enable_op_determinism()
    users, products, ratings = synthetic_purchases(version)
    model = build_model()
    model.fit([users, products], ratings, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=True, verbose=2)
    return model


def train_trees(version: int):  # -> sklearn.ensemble.GradientBoostingRegressor
    """Gradient-boosted regression trees over version `version`'s purchases, deterministically."""
    from sklearn.ensemble import GradientBoostingRegressor

    users, products, ratings = synthetic_purchases(version)
    trees = GradientBoostingRegressor(n_estimators=TREES, max_depth=TREE_DEPTH, random_state=version)
    return trees.fit(np.column_stack([users.ravel(), products.ravel()]), ratings.ravel())


def written_pmml_scores(path: Path):  # -> Callable[[np.ndarray, np.ndarray], np.ndarray]
    """The PMML document at `path` as the flow would score it: vetted by the guard, loaded by the
    evaluator."""
    from flows.core.admission.pmml_trial import PmmlModel, vet

    return PmmlModel(path, vet(path, path.stat().st_size)).score


def top_k_agreement_with(model_path: Path, scores_of) -> tuple[float, float]:
    """The mean top-k agreement (as `flows.core.challenger` reports it) of `scores_of(users, products)` with
    the ONNX model at `model_path`, over generated records; and that of random scores, for scale."""
    import onnxruntime

    from flows.adapters.sources.generators import generated_records
    from flows.core.challenger import top_k_agreement

    records = list(generated_records(seed=7, count=AGREEMENT_RECORDS))
    counts = np.array([len(record.products) for record in records])
    users = np.repeat([record.user for record in records], counts).astype(np.float32)
    products = np.concatenate([record.products for record in records]).astype(np.float32)
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"users": users.reshape(-1, 1), "products": products.reshape(-1, 1)})[0]
    chance = np.random.default_rng(7).random(users.size)

    def agreement(scores: np.ndarray) -> float:
        return float(top_k_agreement(reference.ravel(), scores, counts, AGREEMENT_TOP_K).mean())

    return agreement(scores_of(users, products)), agreement(chance)


def export(version: int, model_format: str, directory: Path, saved_model: Path | None = None) -> Path:
    """Train version `version` (or take the weights of `saved_model`) and write it to `directory`."""
    if directory.exists():
        shutil.rmtree(directory)
    if model_format == PMML:
        from flows.tools.pmml_export import write_pmml

        description = (
            f"recommender version {version}: gradient-boosted trees ({TREES} of depth {TREE_DEPTH}) "
            "written by serving-train-model --format pmml"
        )
        return write_pmml(train_trees(version), directory, description)
    if model_format == ONNX:
        weights = (
            saved_model_weights(saved_model) if saved_model else [w.numpy() for w in train(version).weights]
        )
        return write_onnx(weights, directory, f"recommender-v{version}")
    export_saved_model(train(version), directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(prog="serving-train-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", type=int, required=True, help="model version to train (seeds the data)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"export directory (default: {SHIPPED_MODELS_DIR}/VERSION)"
    )
    parser.add_argument(
        "--format",
        choices=(SAVED_MODEL, ONNX, PMML),
        default=SAVED_MODEL,
        help="what to write (default: savedmodel)",
    )
    parser.add_argument(
        "--from-saved-model",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --format onnx: convert this SavedModel's weights instead of training",
    )
    args = parser.parse_args()
    if args.from_saved_model and args.format != ONNX:
        parser.error("--from-saved-model converts to ONNX: add --format onnx")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    default_name = str(args.version) if args.format == SAVED_MODEL else f"{args.version}-{args.format}"
    path = export(
        args.version, args.format, args.out or SHIPPED_MODELS_DIR / default_name, args.from_saved_model
    )
    print(f"exported recommender version {args.version} ({args.format}) to {path}")
    twin = SHIPPED_MODELS_DIR / f"{args.version}-onnx" / ONNX_MODEL_FILE
    if args.format == PMML and twin.is_file():
        agreement, chance = top_k_agreement_with(twin, written_pmml_scores(path / PMML_MODEL_FILE))
        print(
            f"top-{AGREEMENT_TOP_K} agreement with {twin.parent.name} over {AGREEMENT_RECORDS:,} generated "
            f"records: {agreement:.3f} (random scores: {chance:.3f})"
        )


if __name__ == "__main__":
    main()
