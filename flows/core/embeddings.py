"""A model's embedding tables, for the users and products it holds most alike (cosine over the rows).

A model declares its tables by its structure, the same structure that tells the flow which ids it takes
(`Scorer.input_bounds`): each input reaches a gather (ONNX `Gather`, TensorFlow `GatherV2`/`ResourceGather`)
over one two-dimensional table, row per id. The embedded scorers read those two tables when they load a model
(`flows.core.admission.onnx_graph.embedding_tables`, `flows.core.admission.saved_model_bounds`) and hand
them here; a model behind a server, a PMML document or an ensemble has none, and its explanations name no
neighbours.

The tables come from a model file, so they are checked before anything is paid for them: two-dimensional,
finite floats, one row per id the model takes, and at most `MAX_TABLE_VALUES` values each (the normalised
copy kept here costs as much memory as the table; a lookup, one product of a row with the table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flows.core.scorer import InputBounds

MAX_TABLE_VALUES = 1 << 24  # 64 MB of float32 per table: a lookup then costs about 10 ms


@dataclass(frozen=True, slots=True)
class EmbeddingTables:
    """The users' and the products' rows, each scaled to unit length (a zero row stays zero)."""

    users: np.ndarray
    products: np.ndarray

    @classmethod
    def of(
        cls, users: np.ndarray, products: np.ndarray, bounds: InputBounds | None
    ) -> EmbeddingTables | None:
        """The tables, if both are fit to look neighbours up in (see the module docstring), else None."""
        if bounds is None:
            return None
        unit = []
        for table, rows in ((users, bounds.users), (products, bounds.products)):
            if table.ndim != 2 or table.shape[0] != rows or not 0 < table.size <= MAX_TABLE_VALUES:
                return None
            if not np.issubdtype(table.dtype, np.floating) or not np.isfinite(table).all():
                return None
            rows_f = table.astype(np.float32)
            norms = np.linalg.norm(rows_f, axis=1, keepdims=True)
            unit.append(np.divide(rows_f, norms, out=np.zeros_like(rows_f), where=norms > 0))
        return cls(unit[0], unit[1])

    def similar_users(self, user: int, count: int) -> list[int]:
        """The `count` users whose rows point most nearly the way `user`'s does (not `user` itself)."""
        return _most_alike(self.users, user, count)

    def similar_products(self, product: int, count: int) -> list[int]:
        """The `count` products whose rows point most nearly the way `product`'s does (not itself)."""
        return _most_alike(self.products, product, count)


def _most_alike(table: np.ndarray, row: int, count: int) -> list[int]:
    if count <= 0 or not 0 <= row < table.shape[0]:
        return []
    cosines = table @ table[row]
    cosines[row] = -np.inf
    count = min(count, table.shape[0] - 1)
    if count <= 0:
        return []
    nearest = np.argpartition(-cosines, count - 1)[:count]
    return nearest[np.argsort(-cosines[nearest], kind="stable")].tolist()
