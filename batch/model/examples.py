"""Which tf.Example features a signature parses, read from its graph.

A signature whose one input is a string tensor of serialized tf.Examples (TFX's
``serve_tf_examples_fn``) parses them with a ``ParseExample``/``ParseExampleV2`` op.
Its feature keys, value types, dense shapes and defaults are in the op's attributes
and constant inputs: reading them tells which input columns the model needs, of which
type, and which may be absent, without calling the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from batch.model.signature import ExampleFeature, FeatureKind

PARSE_OPS = ("ParseExample", "ParseExampleV2")
# Ops between a constant and the parse op that keep its value (defaults get reshaped).
_PASS_THROUGH = ("Identity", "Reshape")


def parsed_features(tf: Any, meta_graph: Any, signature_def: Any) -> dict[str, ExampleFeature]:
    """The features the signature's ParseExample ops read (the union, in key order);
    empty if its graph parses no tf.Examples. Raises ValueError when an op's keys are not
    constants or two ops read one feature with different types."""
    features: dict[str, ExampleFeature] = {}
    for node, scope in _reachable_nodes(meta_graph.graph_def, signature_def):
        if node.op not in PARSE_OPS:
            continue
        for name, feature in _read_parse_op(tf, node, scope).items():
            known = features.get(name)
            if known is not None and (known.dtype, known.kind) != (feature.dtype, feature.kind):
                raise ValueError(
                    f"the graph parses tf.Example feature '{name}' twice, as {known.kind} "
                    f"{known.dtype} and as {feature.kind} {feature.dtype}"
                )
            if known is None or (known.has_default and not feature.has_default):
                features[name] = feature
    return dict(sorted(features.items()))


def _node_name(reference: str) -> str:
    """``name``, ``name:0``, ``name:output:0`` or ``^name`` as the node's name."""
    return reference.lstrip("^").split(":")[0]


def _called_functions(node: Any) -> Iterator[str]:
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        elif value.HasField("list"):
            yield from (f.name for f in value.list.func)


def _reachable_nodes(graph_def: Any, signature_def: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Every node the signature's outputs depend on: their ancestors in the main graph and
    the bodies of the functions those call, transitively; each with its scope (the nodes
    by name that its inputs refer to)."""
    main = {node.name: node for node in graph_def.node}
    library = {f.signature.name: f for f in graph_def.library.function}
    stack = [_node_name(t.name) for t in signature_def.outputs.values() if t.name]
    seen: set[str] = set()
    calls: list[str] = []
    while stack:
        name = stack.pop()
        if name in seen or name not in main:
            continue
        seen.add(name)
        node = main[name]
        yield node, main
        calls += _called_functions(node)
        stack += [_node_name(i) for i in node.input]
    done: set[str] = set()
    while calls:
        name = calls.pop()
        if name in done or name not in library:
            continue
        done.add(name)
        body = library[name]
        scope = {node.name: node for node in body.node_def}
        for node in body.node_def:
            yield node, scope
            calls += _called_functions(node)


def _constant(tf: Any, reference: str, scope: Mapping[str, Any]) -> Any:
    """The value of the constant ``reference`` resolves to, or None if it is computed."""
    node = scope.get(_node_name(reference))
    while node is not None and node.op in _PASS_THROUGH and node.input:
        node = scope.get(_node_name(node.input[0]))
    if node is None or node.op != "Const":
        return None
    return tf.make_ndarray(node.attr["value"].tensor)


def _keys(tf: Any, references: list[str], scope: Mapping[str, Any], op: str) -> list[str]:
    keys: list[str] = []
    for reference in references:
        value = _constant(tf, reference, scope)
        if value is None:
            raise ValueError(
                f"the feature names of its {op} op are computed, not constants "
                f"('{reference}'), so batchscore cannot tell which columns it needs"
            )
        keys += [k.decode() if isinstance(k, bytes) else str(k) for k in value.reshape(-1)]
    return keys


def _read_parse_op(tf: Any, node: Any, scope: Mapping[str, Any]) -> dict[str, ExampleFeature]:
    attr = node.attr
    inputs = [i for i in node.input if not i.startswith("^")]
    dtype = lambda enum: tf.dtypes.as_dtype(enum).name  # noqa: E731
    if node.op == "ParseExampleV2":
        num_sparse = attr["num_sparse"].i
        sparse_keys = _keys(tf, [inputs[2]], scope, node.op)
        dense_keys = _keys(tf, [inputs[3]], scope, node.op)
        ragged_keys = _keys(tf, [inputs[4]], scope, node.op)
        defaults = inputs[5 : 5 + len(dense_keys)]
        ragged_types = list(attr["ragged_value_types"].list.type)
    else:
        num_sparse = attr["Nsparse"].i
        dense_count = attr["Ndense"].i
        sparse_keys = _keys(tf, inputs[2 : 2 + num_sparse], scope, node.op)
        dense_keys = _keys(
            tf, inputs[2 + num_sparse : 2 + num_sparse + dense_count], scope, node.op
        )
        defaults = inputs[2 + num_sparse + dense_count :]
        ragged_keys, ragged_types = [], []
    if len(sparse_keys) != num_sparse:
        raise ValueError(f"its {node.op} op names {len(sparse_keys)} sparse keys, not {num_sparse}")
    features: dict[str, ExampleFeature] = {}
    for key, enum in zip(sparse_keys, attr["sparse_types"].list.type, strict=True):
        features[key] = ExampleFeature(dtype(enum), "sparse")
    ragged: FeatureKind = "ragged"
    for key, enum in zip(ragged_keys, ragged_types, strict=True):
        features[key] = ExampleFeature(dtype(enum), ragged)
    shapes = attr["dense_shapes"].list.shape
    for key, enum, shape, default in zip(
        dense_keys, attr["Tdense"].list.type, shapes, defaults, strict=True
    ):
        value = _constant(tf, default, scope)
        features[key] = ExampleFeature(
            dtype(enum),
            "dense",
            tuple(d.size if d.size >= 0 else None for d in shape.dim),
            # An empty default means none: the feature is required. A computed default
            # is a default all the same.
            has_default=value is None or value.size > 0,
        )
    return features
