"""Vet a SavedModel's graph before TensorFlow loads it, without importing TensorFlow.

Loading a SavedModel is not passive: the TF1 loaders (``tf.compat.v1.saved_model.load``,
``load_v1_in_v2``, TensorFlow Serving's C++ ``LoadSavedModel``) run the saver's restore op and the
init op (``__saved_model_init_op`` signature, else the ``saved_model_main_op`` collection, else
``legacy_init_op``), and the TF2 loader (``tf.saved_model.load``) runs the object graph's resource
initializers and any restore functions of objects with custom checkpointing. Serving then runs the
signature functions. So this module parses ``saved_model.pb`` and refuses a model that uses any op
outside an allow-list anywhere such code can reach.

Parsing needs the SavedModel protobuf schema, read from TensorFlow's installed files without importing
TensorFlow (:mod:`flows.core.admission.saved_model_schema`). The op lists are in
:mod:`flows.core.admission.saved_model_ops`.

Rule implemented by :func:`inspect_saved_model` (per MetaGraphDef):

* every op of every top-level node and of every function in the library must be in ``allowed_ops``,
  except ops that call a library function (op name = function name, or a ``func`` / ``list(func)``
  attr such as ``f`` of ``StatefulPartitionedCall``, branches of ``If``/``Case``, ``body``/``cond`` of
  ``While``): those calls are followed and the callee is judged instead;
* exception, the checkpoint code: a top-level node only the ``saver_def``'s save node
  (``save_tensor_name``) depends on, and a function reached only from such nodes, may also use
  :data:`CHECKPOINT_SAVE_OPS`; likewise for the restore node (``restore_op_name``) and
  :data:`CHECKPOINT_RESTORE_OPS`. "Only": a top-level node loses the exemption if it is not upstream
  of a saver node, or a signature or collection names it, or a node that lost it depends on it; a
  function loses it if it is reachable from a node that lost it or from any library function not on
  a saver path (every library function is treated as runnable: the TF2 loader restores all of them
  and the object graph can attach any of them to an object). No loader runs the save path (only an
  explicit ``Checkpoint.save``/``Saver.save`` would); the TF1 and C++ loaders (TensorFlow Serving)
  run the restore path with the variables prefix fed; ``tf.saved_model.load`` on a TF2 model runs
  neither (it restores variables with its own Python ``TrackableSaver``/``MultiDeviceSaver`` code,
  and runs only the object graph's resource initializers and custom restore functions, which here
  are general functions);
* ``legacy_init_op`` is refused outright (only TF1 writes it); ``saved_model_main_op`` and the
  ``__saved_model_init_op`` signature (TF2's ``tf.saved_model.save`` writes both, naming a bare
  ``NoOp``) are accepted only if they name an existing top-level node whose transitive inputs use
  allowed ops only and do not reach the saver nodes;
* no ``saved_model.pbtxt`` / ``saved_model.cpb`` next to or instead of ``saved_model.pb`` (ambiguous
  which a loader would read), the file must not exceed ``max_bytes`` (checked before reading), and
  asset file names must be relative with no ``..``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass

from flows.core.admission.saved_model_ops import (
    CHECKPOINT_RESTORE_OPS,
    CHECKPOINT_SAVE_OPS,
    DEFAULT_ALLOWED_OPS,
    DENIED_OPS,
)
from flows.core.admission.saved_model_schema import parse_saved_model

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # the shipped models' saved_model.pb are 37 KB

# Keys the TF loaders read to find the op run at load (tensorflow/python/saved_model/constants.py).
_INIT_OP_SIGNATURE_KEY = "__saved_model_init_op"
_MAIN_OP_KEY = "saved_model_main_op"
_LEGACY_INIT_OP_KEY = "legacy_init_op"


# --------------------------------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------------------------------


def _node_name(tensor_or_op: str) -> str:
    """``'^a/b'``, ``'a/b:0'`` -> ``'a/b'``."""
    return tensor_or_op.lstrip("^").split(":", 1)[0]


def _func_names_in_attr(value) -> Iterator[str]:
    """Function names in an AttrValue (``func`` or ``list(func)``), including nested NameAttrLists."""
    kind = value.WhichOneof("value")
    if kind == "func":
        funcs = [value.func]
    elif kind == "list":
        funcs = list(value.list.func)
    else:
        return
    for func in funcs:
        yield func.name
        for nested in func.attr.values():
            yield from _func_names_in_attr(nested)


def _callees(node, library: dict) -> Iterator[str]:
    """Functions a NodeDef calls: by op name or through func-valued attrs."""
    if node.op in library:
        yield node.op
    for value in node.attr.values():
        yield from _func_names_in_attr(value)


def _reachable(
    starts: Iterable[str], known: Container[str], after: Callable[[str], Iterable[str]]
) -> set[str]:
    """The names in ``known`` reachable from ``starts`` (themselves included), going from a name to
    ``after(name)``."""
    seen: set[str] = set()
    stack = [name for name in starts if name in known]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(next_name for next_name in after(name) if next_name in known and next_name not in seen)
    return seen


def _closure(roots: Iterable[str], calls: dict[str, set[str]]) -> set[str]:
    """Functions that calling ``roots`` may run (the callees, transitively)."""
    return _reachable(roots, calls, calls.__getitem__)


def _upstream(starts: Iterable[str], nodes: dict) -> set[str]:
    """Top-level nodes that running ``starts`` runs (data and control inputs, transitively)."""
    return _reachable(starts, nodes, lambda name: (_node_name(x) for x in nodes[name].input))


def _signature_tensor_names(tensor_info) -> Iterator[str]:
    kind = tensor_info.WhichOneof("encoding")
    if kind == "name":
        yield tensor_info.name
    elif kind == "coo_sparse":
        sparse = tensor_info.coo_sparse
        yield from (sparse.values_tensor_name, sparse.indices_tensor_name, sparse.dense_shape_tensor_name)
    elif kind == "composite_tensor":
        for component in tensor_info.composite_tensor.components:
            yield from _signature_tensor_names(component)


def _inspect_meta_graph(meta_graph, label: str, allowed_ops: frozenset[str]) -> list[str]:
    """The problems of one MetaGraphDef, each prefixed with `label`, in the order of the steps below."""
    graph = meta_graph.graph_def
    library = {f.signature.name: f for f in graph.library.function}
    nodes = {n.name: n for n in graph.node}
    calls = _call_graph(library)
    paths = _saver_paths(meta_graph, nodes, library, calls)
    problems = [
        *_functions_named_like_ops(library, allowed_ops),
        *_functions_calling_unknown_functions(library),
        *_top_level_nodes_calling_unknown_functions(graph.node, library),
        *_ops_outside_the_allow_list(graph.node, library, allowed_ops, paths),
        *_init_ops_run_at_load(meta_graph, nodes, library, calls, allowed_ops, paths.saver_nodes),
        *_assets_escaping_the_assets_directory(meta_graph),
    ]
    return [f"{label}: {problem}" for problem in problems]


def _call_graph(library: dict) -> dict[str, set[str]]:
    """The functions each library function calls."""
    return {name: {c for nd in f.node_def for c in _callees(nd, library)} for name, f in library.items()}


def _functions_named_like_ops(library: dict, allowed_ops: frozenset[str]) -> Iterator[str]:
    """A function named like an op would hide it: a node of that op is followed as a call to the function,
    and the op itself never judged."""
    for name in library:
        if (
            name in allowed_ops
            or name in DENIED_OPS
            or name in CHECKPOINT_SAVE_OPS
            or name in CHECKPOINT_RESTORE_OPS
        ):
            yield f"library function {name!r} has the name of an op"


def _functions_calling_unknown_functions(library: dict) -> Iterator[str]:
    for name, f in library.items():
        for nd in f.node_def:
            for callee in _callees(nd, library):
                if callee not in library:
                    yield f"function {name!r} node {nd.name!r} calls unknown function {callee!r}"


def _top_level_nodes_calling_unknown_functions(graph_nodes: Iterable, library: dict) -> Iterator[str]:
    for node in graph_nodes:
        for callee in set(_callees(node, library)) - set(library):
            yield f"top-level node {node.name!r} calls unknown function {callee!r}"


@dataclass(frozen=True)
class _SaverPaths:
    """Where each top-level node and library function stands: on the saver's save path, its restore path,
    or "general" (anything else may run it). See :func:`_saver_paths`."""

    save_node: str | None
    restore_node: str | None
    up_save: set[str]  # top-level nodes the save node depends on
    up_restore: set[str]  # top-level nodes the restore node depends on
    general_nodes: set[str]
    saving: set[str]  # library functions reached from the save path
    restoring: set[str]  # library functions reached from the restore path
    general: set[str]  # library functions anything else may run

    @property
    def saver_nodes(self) -> set[str]:
        return {n for n in (self.save_node, self.restore_node) if n}


def _saver_paths(meta_graph, nodes: dict, library: dict, calls: dict[str, set[str]]) -> _SaverPaths:
    """The contexts. The saver_def names a save node and a restore node in the top-level graph (TF2: one
    StatefulPartitionedCall each, calling __inference__traced_save_* / _restore_*; TF1: a "save/" subgraph
    of top-level SaveV2 / RestoreV2 nodes). A top-level node is on the save (restore) path if the save
    (restore) node depends on it; it is "general" if anything else may run it: it is not on a saver path,
    or a signature / collection names it, or a general node depends on it. Functions inherit the contexts
    of their callers; every library function not reached from a saver path is a general root itself (the
    TF2 loader restores all of them)."""
    saver = meta_graph.saver_def if meta_graph.HasField("saver_def") else None
    save_node = _node_name(saver.save_tensor_name) if saver and saver.save_tensor_name else None
    restore_node = _node_name(saver.restore_op_name) if saver and saver.restore_op_name else None
    up_save = _upstream([save_node], nodes) if save_node is not None and save_node in nodes else set()
    up_restore = (
        _upstream([restore_node], nodes) if restore_node is not None and restore_node in nodes else set()
    )
    seeds = set(nodes) - up_save - up_restore
    for signature in meta_graph.signature_def.values():
        for info in list(signature.inputs.values()) + list(signature.outputs.values()):
            seeds.update(_node_name(t) for t in _signature_tensor_names(info))
    for collection in meta_graph.collection_def.values():
        if collection.WhichOneof("kind") == "node_list":
            seeds.update(_node_name(v) for v in collection.node_list.value)
    general_nodes = _upstream(seeds, nodes)

    save_roots: set[str] = set()
    restore_roots: set[str] = set()
    general_roots: set[str] = set()
    for node in meta_graph.graph_def.node:
        callees = set(_callees(node, library))
        if node.name in general_nodes:
            general_roots |= callees
        else:
            if node.name in up_save:
                save_roots |= callees
            if node.name in up_restore:
                restore_roots |= callees
    saving = _closure(save_roots, calls)
    restoring = _closure(restore_roots, calls)
    general_roots |= set(library) - saving - restoring  # any other function may be run
    general = _closure(general_roots, calls)
    return _SaverPaths(
        save_node, restore_node, up_save, up_restore, general_nodes, saving, restoring, general
    )


def _ops_outside_the_allow_list(
    graph_nodes: Iterable, library: dict, allowed_ops: frozenset[str], paths: _SaverPaths
) -> Iterator[str]:
    """Every op judged where it stands; one problem per (place, op), naming up to three nodes."""
    offences: dict[tuple[str, str, str], list[str]] = {}

    def judge(op: str, place: str, node_name: str, extra: frozenset[str], context: str) -> None:
        if op in library or op in allowed_ops or op in extra:
            return
        offences.setdefault((place, op, context), []).append(node_name)

    for node in graph_nodes:
        judge(
            node.op,
            "the top-level graph",
            node.name,
            *_context(node.name, paths.general_nodes, paths.up_save, paths.up_restore),
        )
    for name, f in library.items():
        extra, context = _context(name, paths.general, paths.saving, paths.restoring)
        for nd in f.node_def:
            judge(nd.op, f"function {name!r}", nd.name, extra, context)
    for (place, op, context), names in offences.items():
        shown = ", ".join(repr(n) for n in names[:3]) + (
            f" and {len(names) - 3} more" if len(names) > 3 else ""
        )
        kind = "node" if len(names) == 1 else "nodes"
        if op in CHECKPOINT_SAVE_OPS | CHECKPOINT_RESTORE_OPS:
            yield f"checkpoint op {op!r} in {place} ({kind} {shown}), which is {context}"
        else:
            yield f"disallowed op {op!r} in {place} ({kind} {shown})"


def _init_ops_run_at_load(
    meta_graph,
    nodes: dict,
    library: dict,
    calls: dict[str, set[str]],
    allowed_ops: frozenset[str],
    saver_nodes: set[str],
) -> Iterator[str]:
    """Init ops run at load by the TF1 / C++ loaders: a TF1 legacy init op is refused; the main op and the
    init-op signature may only run allowed ops, away from the saver nodes."""
    collections = meta_graph.collection_def
    if _LEGACY_INIT_OP_KEY in collections:
        yield f"has a TF1 {_LEGACY_INIT_OP_KEY!r} (run at load); refused"
    init_ops: list[tuple[str, str]] = []
    if _INIT_OP_SIGNATURE_KEY in meta_graph.signature_def:
        for info in meta_graph.signature_def[_INIT_OP_SIGNATURE_KEY].outputs.values():
            init_ops += [(f"signature {_INIT_OP_SIGNATURE_KEY!r}", t) for t in _signature_tensor_names(info)]
    if _MAIN_OP_KEY in collections:
        collection = collections[_MAIN_OP_KEY]
        if collection.WhichOneof("kind") != "node_list":
            yield f"collection {_MAIN_OP_KEY!r} is not a node list"
        init_ops += [(f"main_op (collection {_MAIN_OP_KEY!r})", v) for v in collection.node_list.value]
    for what, tensor in init_ops:
        start = _node_name(tensor)
        if start not in nodes:
            yield f"{what} names unknown node {tensor!r}"
            continue
        for message in _upstream_problems(start, nodes, library, calls, allowed_ops, saver_nodes):
            yield f"{what} {tensor!r} runs at load and {message}"


def _assets_escaping_the_assets_directory(meta_graph) -> Iterator[str]:
    """Asset file names are resolved under <export_dir>/assets/ by the loaders."""
    for asset in meta_graph.asset_file_def:
        filename = asset.filename
        if (
            filename.startswith(("/", "\\"))
            or ".." in pathlib.PurePosixPath(filename).parts
            or ".." in pathlib.PureWindowsPath(filename).parts
            or ":" in filename
        ):
            yield f"asset file name {filename!r} escapes the assets directory"


def _context(
    name: str, general: set[str], saving: set[str], restoring: set[str]
) -> tuple[frozenset[str], str]:
    """The checkpoint ops a node or function may use besides the allow-list, and where it stands."""
    if name in general:
        return frozenset(), "reachable outside the saver's save/restore path"
    if name in saving and name in restoring:
        return CHECKPOINT_SAVE_OPS & CHECKPOINT_RESTORE_OPS, "on both the saver's save and restore paths"
    if name in saving:
        return CHECKPOINT_SAVE_OPS, "on the saver's save path"
    return CHECKPOINT_RESTORE_OPS, "on the saver's restore path"


def _upstream_problems(start, nodes, library, calls, allowed_ops, saver_nodes) -> list[str]:
    """What the top-level subgraph that running node ``start`` executes does wrong."""
    problems: list[str] = []
    seen: set[str] = set()
    stack = [start]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = nodes.get(name)
        if node is None:
            problems.append(f"depends on unknown node {name!r}")
            continue
        if name in saver_nodes:
            problems.append(f"depends on saver node {name!r}")
        if node.op not in library and node.op not in allowed_ops:
            problems.append(f"reaches disallowed op {node.op!r} (node {name!r})")
        for callee in _callees(node, library):
            # Already judged as general functions; named again so the message says what the init
            # op runs ("main_op ... reaches 'WriteFile' in function ...").
            for fname in sorted(_closure([callee], calls)):
                bad = sorted(
                    {
                        nd.op
                        for nd in library[fname].node_def
                        if nd.op not in library and nd.op not in allowed_ops
                    }
                )
                if bad:
                    problems.append(f"reaches disallowed ops {bad} in function {fname!r}")
        stack.extend(_node_name(i) for i in node.input)
    return list(dict.fromkeys(problems))


def inspect_saved_model(
    directory: pathlib.Path,
    allowed_ops: frozenset[str] = DEFAULT_ALLOWED_OPS,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[str]:
    """Problems that make the SavedModel in ``directory`` unsafe to load or serve (empty = fine).

    Reads only ``saved_model.pb`` (at most ``max_bytes`` of it); never imports TensorFlow.
    """
    directory = pathlib.Path(directory)
    path = directory / "saved_model.pb"
    problems: list[str] = []
    for other in ("saved_model.pbtxt", "saved_model.cpb"):
        if (directory / other).exists():
            problems.append(f"{directory / other} present: loaders may read it instead of saved_model.pb")
    if not path.is_file():
        return problems + [f"{path} does not exist or is not a regular file"]
    size = path.stat().st_size
    if size > max_bytes:
        return problems + [f"{path} is {size} bytes, over the {max_bytes}-byte limit; not parsed"]
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew between stat and read
        return problems + [f"{path} is over the {max_bytes}-byte limit; not parsed"]
    try:
        saved_model = parse_saved_model(data)
    except Exception as error:  # noqa: BLE001 (protobuf raises DecodeError and others on hostile bytes)
        return problems + [f"{path} is not a SavedModel protobuf: {error}"]
    if not saved_model.meta_graphs:
        problems.append(f"{path} has no MetaGraphDef")
    for index, meta_graph in enumerate(saved_model.meta_graphs):
        tags = ",".join(meta_graph.meta_info_def.tags) or "-"
        problems += _inspect_meta_graph(meta_graph, f"meta_graph[{index}] (tags {tags})", allowed_ops)
    return problems
