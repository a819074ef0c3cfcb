"""PMML documents for the tests: a sane regression tree over the contract, and hostile ones, each of which
must be refused by `flows.core.admission.pmml_guard` or the trial, naming its cause.

Small cases return bytes; the large ones are written to disk in batches, so that making them takes no more
memory than reading them should.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import numpy as np

NS = "http://www.dmg.org/PMML-4_4"
CONTRACT_FIELDS = (
    ("users", "continuous", "float"),
    ("products", "continuous", "float"),
    ("rating", "continuous", "double"),
)
CONTRACT_SCHEMA = (("users", "active"), ("products", "active"), ("rating", "target"))
SMALL_TREE = """
    <Node id="0" score="0.5"><True/>
      <Node id="1" score="0.3"><SimplePredicate field="users" operator="lessThan" value="500"/></Node>
      <Node id="2" score="0.7"><SimplePredicate field="users" operator="greaterOrEqual" value="500"/></Node>
    </Node>"""


def _head(doctype: str = "", fields: tuple[tuple[str, str, str], ...] = CONTRACT_FIELDS) -> str:
    """XML declaration, optional DOCTYPE, PMML root and DataDictionary: the part every case shares."""
    data_fields = "".join(f'\n    <DataField name="{n}" optype="{o}" dataType="{t}"/>' for n, o, t in fields)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n{doctype}<PMML xmlns="{NS}" version="4.4">\n'
        f'  <Header description="recommender"/>\n'
        f'  <DataDictionary numberOfFields="{len(fields)}">{data_fields}\n  </DataDictionary>\n'
    )


def _schema(schema: tuple[tuple[str, str], ...] = CONTRACT_SCHEMA) -> str:
    fields = "".join(f'\n      <MiningField name="{n}" usageType="{u}"/>' for n, u in schema)
    return f"    <MiningSchema>{fields}\n    </MiningSchema>"


def document(
    body: str = SMALL_TREE,
    *,
    model: str = "TreeModel",
    doctype: str = "",
    fields: tuple[tuple[str, str, str], ...] = CONTRACT_FIELDS,
    schema: tuple[tuple[str, str], ...] = CONTRACT_SCHEMA,
) -> bytes:
    """A whole PMML document with one top-level `model` holding `body` after its MiningSchema."""
    return (
        f'{_head(doctype, fields)}  <{model} functionName="regression">\n{_schema(schema)}{body}\n'
        f"  </{model}>\n</PMML>\n"
    ).encode()


def sane_tree() -> bytes:
    """A small regression tree over the contract's inputs; the guard and the contract must accept it."""
    return document()


# A tree whose four leaves split users at 500 and products at 5,000: what the scorer must answer.
QUADRANT_SCORES = {(False, False): 0.2, (False, True): 0.4, (True, False): 0.6, (True, True): 0.8}


def quadrant_tree(nan_leaf: bool = False) -> bytes:
    """A binary regression tree (the shape scikit-learn exports) with a known answer per pair
    (`quadrant_scores`); with `nan_leaf`, the leaf of users 500 and over, products 5,000 and over answers
    NaN."""
    halves = []
    for many_users in (False, True):
        leaves = []
        for many_products in (False, True):
            score = QUADRANT_SCORES[(many_users, many_products)]
            value = "NaN" if nan_leaf and many_users and many_products else str(score)
            leaves.append(f'<Node score="{value}">{_split("products", 5000, many_products)}</Node>')
        halves.append(f'<Node score="0.5">{_split("users", 500, many_users)}{"".join(leaves)}</Node>')
    return document(f'\n    <Node score="0.5"><True/>{"".join(halves)}</Node>')


def _split(field: str, at: int, above: bool) -> str:
    operator = "greaterOrEqual" if above else "lessThan"
    return f'<SimplePredicate field="{field}" operator="{operator}" value="{at}"/>'


def quadrant_scores(users: np.ndarray, products: np.ndarray) -> np.ndarray:
    """What `quadrant_tree` answers for each pair."""
    return np.array(
        [QUADRANT_SCORES[(int(user) >= 500, int(product) >= 5000)] for user, product in zip(users, products)],
        np.float32,
    )


def external_file_entity(path: str) -> bytes:
    """XXE: an external entity naming a local file, expanded into the Header's text."""
    return document(
        doctype=f'<!DOCTYPE PMML [<!ENTITY secret SYSTEM "file://{path}">]>\n',
        body="\n    <Extension>&secret;</Extension>" + SMALL_TREE,
    )


def external_url_entity(url: str) -> bytes:
    """XXE/SSRF: an external entity naming a URL, which a resolving parser would fetch."""
    return document(
        doctype=f'<!DOCTYPE PMML [<!ENTITY remote SYSTEM "{url}">]>\n',
        body="\n    <Extension>&remote;</Extension>" + SMALL_TREE,
    )


def external_dtd(url: str) -> bytes:
    """An external DTD subset: fetched by a validating or DTD-loading parser even with no entity used."""
    return document(doctype=f'<!DOCTYPE PMML SYSTEM "{url}">\n')


def billion_laughs(levels: int = 10) -> bytes:
    """Exponential entity expansion: 10 levels of 10 references expand to 10**10 'lol's."""
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels)
    ]
    return document(
        doctype=f"<!DOCTYPE PMML [{''.join(entities)}]>\n",
        body=f"\n    <Extension>&lol{levels - 1};</Extension>" + SMALL_TREE,
    )


def quadratic_blowup(entity_size: int = 100_000, references: int = 20_000) -> bytes:
    """One large entity referenced many times: ~180 KB of input expands to 2 GB, no nesting needed."""
    return document(
        doctype=f'<!DOCTYPE PMML [<!ENTITY big "{"x" * entity_size}">]>\n',
        body=f"\n    <Extension>{'&big;' * references}</Extension>" + SMALL_TREE,
    )


def internal_entity_coefficient() -> bytes:
    """A harmless-looking internal entity that silently sets a regression intercept."""
    body = (
        '\n    <RegressionTable intercept="&i;">'
        '\n      <NumericPredictor name="users" coefficient="0.01"/>'
        '\n      <NumericPredictor name="products" coefficient="0.02"/>\n    </RegressionTable>'
    )
    return document(body, model="RegressionModel", doctype='<!DOCTYPE PMML [<!ENTITY i "0.9">]>\n')


def deep_nesting(depth: int = 20_000) -> bytes:
    """Nodes nested 20,000 deep: crashes recursive tree builders and evaluators."""
    return document(body="\n    " + '<Node score="1"><True/>' * depth + "</Node>" * depth)


def scorecard() -> bytes:
    """A well-formed Scorecard, a model type the flow does not allow."""
    body = (
        '\n    <Characteristics>\n      <Characteristic name="u" baselineScore="0">'
        '\n        <Attribute partialScore="1"><True/></Attribute>\n      </Characteristic>'
        "\n    </Characteristics>"
    )
    return document(body, model="Scorecard")


def foreign_fields() -> bytes:
    """A sane tree whose inputs are not the contract's users/products."""
    fields = (
        ("age", "continuous", "double"),
        ("income", "continuous", "double"),
        ("rating", "continuous", "double"),
    )
    schema = (("age", "active"), ("income", "active"), ("rating", "target"))
    return document(SMALL_TREE.replace('field="users"', 'field="age"'), fields=fields, schema=schema)


def categorical_target() -> bytes:
    """A sane tree that predicts a categorical label instead of a rating."""
    fields = CONTRACT_FIELDS[:2] + (("rating", "categorical", "string"),)
    return document(SMALL_TREE.replace('score="0.3"', 'score="low"'), fields=fields)


def _write(path: str, pieces: Iterator[str], batch: int = 10_000) -> int:
    """Write pieces in batches, so the file never exists in memory whole; return its size."""
    with open(path, "w", encoding="utf-8") as out:
        buffered: list[str] = []
        for piece in pieces:
            buffered.append(piece)
            if len(buffered) >= batch:
                out.write("".join(buffered))
                buffered.clear()
        out.write("".join(buffered))
    return os.path.getsize(path)


def _tree_head(root_id: str) -> str:
    """Everything before the root Node's children; the large generators append those."""
    model = '  <TreeModel functionName="regression">\n'
    return f'{_head()}{model}{_schema()}\n    <Node id="{root_id}"><True/>\n'


def _many_nodes(nodes: int) -> Iterator[str]:
    yield _tree_head("root")
    for i in range(nodes):
        yield (
            f'      <Node id="n{i:07d}" score="0.{i % 997:03d}"><SimplePredicate field="products" '
            f'operator="equal" value="{i}"/></Node>\n'
        )
    yield "    </Node>\n  </TreeModel>\n</PMML>\n"


def write_many_nodes(path: str, nodes: int = 1_000_000) -> int:
    """Valid-looking flood: one root Node with a million leaf Nodes, about 100 MB."""
    return _write(path, _many_nodes(nodes))


def _balanced(depth: int, ident: int = 1) -> Iterator[str]:
    """Both children of Node `ident`, each with its predicate, down to `depth` more levels."""
    if depth == 0:
        return
    field = "users" if depth % 2 else "products"
    for side, operator in ((0, "lessThan"), (1, "greaterOrEqual")):
        child = 2 * ident + side
        yield (
            f'<Node id="{child}" score="0.{child % 97}"><SimplePredicate field="{field}" '
            f'operator="{operator}" value="{child % 1000}"/>\n'
        )
        yield from _balanced(depth - 1, child)
        yield "</Node>\n"


def write_sane_large(path: str, depth: int = 14) -> int:
    """A full binary regression tree of the given depth (14: ~33k Nodes, ~3 MB) the guard must accept."""
    return _write(
        path,
        itertools.chain(
            [_tree_head("1")],
            _balanced(depth),
            ["    </Node>\n  </TreeModel>\n</PMML>\n"],
        ),
    )
