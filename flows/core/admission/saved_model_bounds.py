"""What ids a loaded SavedModel can take, read from its serving signature's graph (in the flow, for its
scorer; in the admission child, for the ids of the model's trial).

An id reaches an embedding as a row index: past the table's last row TensorFlow fails the whole call, and
below 0 Keras counts from the end, so user -1 gets the score of the last user. Knowing each input's row
count lets the flow refuse such a record before the call (`flows.core.scoring`).

Which table is the users' is traced, not guessed from names or creation order: from the signature's
`users` input forward through the graph and the functions it calls, to each gather whose indices it
feeds; that gather's table is followed back, through the calls, to the variable the signature captured.
An input that indexes several tables takes the smallest. A graph this cannot follow (no gather reached,
control flow) gives no bounds, and records the model refuses are then found by splitting the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flows.core.scorer import INPUTS, InputBounds

GATHERS = {"GatherV2": 1, "ResourceGather": 1, "Gather": 1}  # op: the position of its indices
PASS_THROUGH = {"Identity", "ReadVariableOp"}  # ops whose first input is the table they hand on
Node = Any  # a NodeDef (TensorFlow is imported only when a model is loaded)
Functions = Mapping[str, Any]  # FunctionDefs by name
Resolve = Callable[[str], "str | None"]  # a name in a function's scope -> the signature's placeholder
Indexed = dict[str, list[Any]]  # per input, the handles of the tables it indexes


def embedding_bounds(tf: Any, signature: Any, indexed: Indexed | None = None) -> InputBounds | None:
    """The rows of the tables `users` and `products` index in `signature` (`indexed`, if the caller traced
    them already); None if either is not found."""
    rows = {}
    for name, handles in (indexed if indexed is not None else indexed_tables(signature)).items():
        sizes = [rows for rows in (_rows(tf, handle) for handle in handles) if rows is not None]
        if not sizes:
            return None
        rows[name] = min(sizes)
    return InputBounds(users=rows["users"], products=rows["products"])


def embedding_tables(signature: Any, indexed: Indexed | None = None) -> tuple[Any, Any] | None:
    """The variables `users` and `products` index in `signature` (`indexed`, if the caller traced them
    already), when each indexes exactly one: how a SavedModel declares its embedding tables
    (`flows.core.embeddings`); None otherwise."""
    variables = {id(variable.handle): variable for variable in signature.variables}
    found = []
    for handles in (indexed if indexed is not None else indexed_tables(signature)).values():
        tables = [variables[id(handle)] for handle in handles if id(handle) in variables]
        if len(tables) != 1 or len(handles) != 1:
            return None
        found.append(tables[0])
    return found[0], found[1]


def indexed_tables(signature: Any) -> Indexed:
    """Per input, the handles (captured tensors) of the tables it indexes in `signature`: a walk of the
    signature's graph and the functions it calls."""
    graph = signature.graph
    graph_def = graph.as_graph_def()
    functions = {function.signature.name: function for function in graph_def.library.function}
    captured = {inner.op.name: outer for outer, inner in graph.captures}
    return {
        name: [
            captured[table]
            for table in _tables_indexed_by(name, graph_def.node, functions)
            if table in captured
        ]
        for name in INPUTS
    }


def _rows(tf: Any, handle: Any) -> int | None:
    """The row count of the variable `handle` refers to; None if it is not a variable with rows."""
    if handle is None or handle.dtype != tf.resource:
        return None
    try:
        shape = tf.raw_ops.VariableShape(input=handle).numpy()
    except tf.errors.OpError:  # a resource that is not a variable (a lookup table, say)
        return None
    return int(shape[0]) if shape.size else None


def _tables_indexed_by(name: str, nodes: Iterable[Node], functions: Functions) -> set[str]:
    """The signature's placeholders (captured variables) of the tables that input `name` indexes."""
    tables: set[str] = set()
    _walk(list(nodes), {name}, lambda _name: None, functions, tables)
    return tables


def _sources(node: Node) -> list[str]:
    """The producers of a node's data inputs ("node:output:0" -> "node"; control inputs left out)."""
    return [source.split(":", 1)[0] for source in node.input if not source.startswith("^")]


def _walk(
    nodes: list[Node], tainted: set[str], resolve: Resolve, functions: Functions, tables: set[str]
) -> None:
    """Mark the nodes of one scope that depend on `tainted`, descending into the functions they call and
    adding to `tables` the table of every gather whose indices depend on it."""
    by_name = {node.name: node for node in nodes}
    changed = True
    while changed:  # a function's nodes are not in dependency order: repeat until nothing new is marked
        changed = False
        for node in nodes:
            sources = _sources(node)
            if node.name in tainted or not tainted.intersection(sources):
                continue
            tainted.add(node.name)
            changed = True
            indices = GATHERS.get(node.op)
            if indices is not None and len(sources) > indices and sources[indices] in tainted:
                table = _placeholder(sources[0], by_name, resolve)
                if table is not None:
                    tables.add(table)
            if "f" in node.attr and node.attr["f"].func.name in functions:
                _call(node, sources, tainted, by_name, resolve, functions, tables)


def _call(
    node: Node,
    sources: list[str],
    tainted: set[str],
    by_name: Mapping[str, Node],
    resolve: Resolve,
    functions: Functions,
    tables: set[str],
) -> None:
    """Walk the function `node` calls, its arguments marked where the caller's inputs are."""
    function = functions[node.attr["f"].func.name]
    arguments = [argument.name for argument in function.signature.input_arg]
    passed = dict(zip(arguments, sources))
    inner_tainted = {argument for argument, source in passed.items() if source in tainted}

    def inner_resolve(argument: str) -> str | None:
        source = passed.get(argument)
        return None if source is None else _placeholder(source, by_name, resolve)

    _walk(list(function.node_def), inner_tainted, inner_resolve, functions, tables)


def _placeholder(name: str, by_name: Mapping[str, Node], resolve: Resolve) -> str | None:
    """The signature's placeholder that `name` (a table, in this scope) comes from, if it can be followed."""
    while name in by_name:
        node = by_name[name]
        if node.op == "Placeholder":
            return name
        if node.op not in PASS_THROUGH or not _sources(node):
            return None
        name = _sources(node)[0]
    return resolve(name)
