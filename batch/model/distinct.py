"""A model's per-row string work done once per distinct value.

A tf.Transform graph maps each category string to a number before anything mixes the
features: it strips or upper-cases it, looks it up in a vocabulary, hashes it into a
bucket. Those ops give row i's result from row i's value alone, so on a dictionary-encoded
column they need to run only on the dictionary's distinct values; each row then takes its
value's result by index (one gather of a number per row instead of a string cut, a lookup
and a hash per row). For the demo model (six string inputs, seven vocabularies, eight hash
buckets) a call then takes about half the CPU it takes row by row (docs/benchmarks.md).

:func:`per_value_graph` finds that work in a loaded signature's graph: it inlines the
graph's functions (Grappler's function optimizer), then, from each string input's cut
(the ``Substr`` that batchscore feeds: batch.model.loading.ServingFunction), follows the
consumers while each is one of a fixed list of ops that work row by row and take nothing
else that depends on the rows (a constant, a scalar, a table). Where such work ends, a
``GatherV2`` by the rows' indices gives each row its value's result, and the rest of the
graph runs as before. Ops outside the list (an op that could fail on a value no row holds,
one that reads other rows, one that mixes two inputs) stay per row. The caller checks the
rewritten graph against the original on a real batch before it trusts it.

A graph may already do its string work once per distinct value of the batch, the usual
TensorFlow way: ``distinct, idx = tf.unique(x)``, the work on ``distinct``, then
``tf.gather(result, idx)`` back to the rows (the demo's product codes). Row i's result is
then the work's result for ``x[i]``, so on a dictionary feed the unique is the
dictionary's own: its distinct values are the region's values, a gather back by its
indices is an identity there, and the region goes on after it (a lookup of the gathered
strings). Only where nothing else reads the unique's outputs (their count, the indices
themselves): those are the batch's own, and the unique then stays per row. For the demo
model this takes product_code's unique of 65,000 strings, the gathers of strings around
it and two vocabulary lookups of the gathered family and tier off the rows: a call takes
about 28% less CPU than with the unique left per row (docs/benchmarks.md, nineteenth
look).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Ops whose output row i depends only on input row i (and on inputs that do not depend
# on the rows: a constant, a scalar, a lookup table), that keep the row's shape, and that
# cannot fail on any value (so running them on a dictionary value no row holds is safe).
ROW_WISE = frozenset(
    {
        "Identity",
        "Cast",
        "StringStrip",
        "StringUpper",
        "StringLower",
        "StaticRegexReplace",
        "StaticRegexFullMatch",
        "StringToHashBucketFast",
        "StringToHashBucketStrong",
        "StringToHashBucket",
        "StringLength",
        "LookupTableFindV2",
        "Equal",
        "NotEqual",
        "Less",
        "LessEqual",
        "Greater",
        "GreaterEqual",
        "AddV2",
        "Sub",
        "Mul",
        "Minimum",
        "Maximum",
        "SelectV2",
        "LogicalAnd",
        "LogicalOr",
        "LogicalNot",
        "ZerosLike",
        "OnesLike",
        "Neg",
        "Abs",
        "Log1p",
        "IsNan",
        "IsFinite",
    }
)
# Ops that change only the dimensions after the rows (checked on their static shapes).
ROW_SHAPING = frozenset({"Reshape", "ExpandDims", "Squeeze"})

ROWS_SCOPE = "batchscore_rows"


@dataclass
class DistinctPlan:
    """A signature's graph with some string inputs' row-wise work moved onto their
    distinct values. ``graph_def``: the rewritten graph (every function inlined) to import
    beside the original; ``rows``: input -> the int32 ``[rows]`` placeholder of each row's
    index into the values its cut is fed; ``fetches``: the outputs' tensor names in it,
    in the order they were asked for; ``ops``: input -> how many ops now run once per
    distinct value."""

    graph_def: Any
    rows: dict[str, str]
    fetches: list[str]
    ops: dict[str, int]


def per_value_graph(
    tf: Any, graph_def: Any, cuts: Mapping[str, str], fetches: Sequence[str]
) -> DistinctPlan | None:
    """The rewrite of ``graph_def`` (a loaded signature's graph) for string inputs fed as
    distinct values: ``cuts`` maps each such input to the name of the op that cuts its
    values (batch.model.loading.ServingFunction's ``Substr``), ``fetches`` are the
    signature's output tensors. None where no input has work beyond its cut to move, or
    where the graph cannot be inlined."""
    flat = _inlined(tf, graph_def, fetches)
    if flat is None:
        return None
    names = {node.name for node in flat.node}
    if not all(cut in names for cut in cuts.values()):
        return None
    scratch = tf.Graph()
    with scratch.as_default():
        tf.graph_util.import_graph_def(flat, name="")
    operations = scratch.get_operations()  # in the order they were built: inputs first
    live = _live(operations)
    refused: set[str] = set()  # Unique ops whose distinct values leave the region
    while True:
        region = _Region(cuts, scratch)
        for op in operations:
            if op.name not in region.owner:
                region.grow(tf, op, live, refused)
        escaped = region.escaped(operations, fetches)
        if not escaped:
            break
        refused |= escaped
    ops = {name: sum(1 for owner in region.owner.values() if owner == name) - 1 for name in cuts}
    if not any(ops.values()):
        return None
    return _rewrite(tf, flat, scratch, region, cuts, fetches, ops)


# The domain of a region's tensors: one entry per value of the input's cut (the rows'
# values, fed as the dictionary's distinct values), or one per value of a Unique's
# output (named by the Unique op) until a gather by its indices brings them back.
VALUES = ""


class _Region:
    """The ops that can run on the distinct values of a string input's cut: for each,
    the input it works on (``owner``), its output's shape there (``shapes``, rows first)
    and its domain (``domains``: :data:`VALUES`, or a Unique op's name)."""

    def __init__(self, cuts: Mapping[str, str], scratch: Any) -> None:
        self.owner: dict[str, str] = {}
        self.shapes: dict[str, Any] = {}
        self.domains: dict[str, str] = {}
        for name, cut in cuts.items():
            self.owner[cut] = name
            self.shapes[cut] = scratch.get_operation_by_name(cut).outputs[0].shape
            self.domains[cut] = VALUES

    def grow(self, tf: Any, op: Any, live: set[str], refused: set[str]) -> None:
        """Add ``op`` where it can run on a region's values."""
        if any(c.name in live for c in op.control_inputs):
            return
        if op.type == "Unique":
            found = None if op.name in refused else self._unique(op)
        elif op.type == "GatherV2" and op.inputs[1].op.type == "Unique":
            found = self._gathered_back(tf, op)
        else:
            found = _row_wise(tf, op, self, live)
        if found is not None:
            self.owner[op.name], self.shapes[op.name], self.domains[op.name] = found

    def _unique(self, op: Any) -> tuple[str, Any, str] | None:
        """``y, idx = Unique(x)`` of a region's values ``x``: row i is ``y[idx[i]]``, so
        any row-wise work on ``y`` that reaches the rows only through a gather by ``idx``
        (:meth:`_gathered_back`) gives row i the result for its value ``x[i]``: the same
        work on the region's values. ``y`` is then the region's values themselves, in
        their own domain (:meth:`escaped` checks that they go nowhere else)."""
        value = op.inputs[0]
        if value.op.name not in self.owner or self.domains[value.op.name] != VALUES:
            return None
        if value.op.type == "Unique" or self.shapes[value.op.name].rank != 1:
            return None
        return self.owner[value.op.name], self.shapes[value.op.name], op.name

    def _gathered_back(self, tf: Any, op: Any) -> tuple[str, Any, str] | None:
        """``GatherV2(f(y), idx, 0)`` of a region's Unique: row i's ``f(x[i])``, which on
        the region's values is ``f`` of them, as they are (an identity there)."""
        params, indices, axis = op.inputs
        unique = indices.op
        if indices.value_index != 1 or unique.name not in self.owner:
            return None
        if params.op.name not in self.owner or self.domains[params.op.name] != unique.name:
            return None
        if op.get_attr("batch_dims") != 0 or _constant(tf, axis) != 0:
            return None
        shape = self.shapes[params.op.name]
        if not op.outputs[0].shape.is_compatible_with(shape):
            return None
        return self.owner[unique.name], shape, VALUES

    def escaped(self, operations: Sequence[Any], fetches: Sequence[str]) -> set[str]:
        """The Unique ops whose distinct values (or anything of their domain) are read by
        an op outside the region or fetched: their work stays per row. (Inside, only
        row-wise ops of one domain read them, and gathers by their indices.)"""
        escaped = {
            self.domains[tensor.op.name]
            for op in operations
            if op.name not in self.owner
            for tensor in op.inputs
            if self.domains.get(tensor.op.name, VALUES) != VALUES
        }
        for name in fetches:
            domain = self.domains.get(name.partition(":")[0], VALUES)
            if domain != VALUES:
                escaped.add(domain)
        return escaped


def _inlined(tf: Any, graph_def: Any, fetches: Sequence[str]) -> Any | None:
    """``graph_def`` pruned to what ``fetches`` need, every function call inlined."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    meta = meta_graph_pb2.MetaGraphDef()
    meta.graph_def.CopyFrom(graph_def)
    for name in fetches:
        meta.collection_def["train_op"].node_list.value.append(name)
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers.extend(["function", "pruning"])
    rewrite.function_optimization = rewriter_config_pb2.RewriterConfig.AGGRESSIVE
    rewrite.min_graph_nodes = -1
    try:
        flat = tf_optimizer.OptimizeGraph(config, meta)
    except Exception:  # Grappler raises many types; the model is then called as it is
        return None
    if len(flat.library.function):
        return None
    return flat


def _live(operations: Sequence[Any]) -> set[str]:
    """The ops whose data inputs depend on a placeholder (the rows)."""
    live: set[str] = set()
    for op in operations:
        if op.type in ("Placeholder", "PlaceholderWithDefault") or any(
            t.op.name in live for t in op.inputs
        ):
            live.add(op.name)
    return live


def _row_wise(tf: Any, op: Any, region: _Region, live: set[str]) -> tuple[str, Any, str] | None:
    """The input whose distinct values ``op`` can work on, the shape of its output there
    and its domain, or None: every input it takes from the region is from one input's
    region, of one domain and of one shape (the rows first), and none is a Unique's
    indices; every other input is fixed (no placeholder above it) and, for an elementwise
    op, a scalar; its one output keeps the rows."""
    if op.type not in ROW_WISE and op.type not in ROW_SHAPING:
        return None
    if len(op.outputs) != 1:
        return None
    rowed = [t for t in op.inputs if t.op.name in region.owner]
    fixed = [t for t in op.inputs if t.op.name not in region.owner]
    owners = {region.owner[t.op.name] for t in rowed}
    domains = {region.domains[t.op.name] for t in rowed}
    if len(owners) != 1 or len(domains) != 1 or any(t.op.name in live for t in fixed):
        return None
    if any(t.op.type == "Unique" and t.value_index != 0 for t in rowed):
        return None
    shape = region.shapes[rowed[0].op.name]
    if (
        shape.rank is None
        or shape.rank < 1
        or any(region.shapes[t.op.name] != shape for t in rowed)
    ):
        return None
    if op.type in ROW_WISE:
        if any(t.shape.rank != 0 for t in fixed):
            return None
        out = shape
    else:
        out = _kept_rows(tf, op, rowed[0], shape, fixed)
        if out is None:
            return None
    if not op.outputs[0].shape.is_compatible_with(out):
        return None
    return owners.pop(), out, domains.pop()


def _kept_rows(tf: Any, op: Any, value: Any, shape: Any, fixed: list[Any]) -> Any | None:
    """The shape a Reshape, ExpandDims or Squeeze gives ``value`` (of ``shape``, all known
    after the rows) where it changes only the dimensions after the rows, else None."""
    if op.inputs[0] is not value or not shape[1:].is_fully_defined():
        return None
    inner = shape[1:].as_list()
    if op.type == "Squeeze":
        dims = {d % shape.rank for d in op.get_attr("squeeze_dims")}
        if not dims or 0 in dims or any(inner[d - 1] != 1 for d in dims):
            return None
        kept = [size for d, size in enumerate(inner, start=1) if d not in dims]
    else:
        constant = _constant(tf, fixed[0]) if len(fixed) == 1 else None
        if constant is None:
            return None
        if op.type == "ExpandDims":
            if constant.size != 1:
                return None
            axis = int(constant.reshape(-1)[0]) % (shape.rank + 1)
            if axis == 0:
                return None
            kept = [*inner[: axis - 1], 1, *inner[axis - 1 :]]
        else:  # Reshape
            if constant.ndim != 1 or not len(constant) or constant[0] != -1:
                return None
            kept = [int(size) for size in constant[1:]]
            if any(size < 0 for size in kept) or math.prod(kept) != math.prod(inner):
                return None
    return tf.TensorShape([None, *kept])


def _constant(tf: Any, tensor: Any) -> Any | None:
    """The value of a ``Const`` op's output, else None."""
    if tensor.op.type != "Const":
        return None
    return tf.make_ndarray(tensor.op.get_attr("value"))


def _rewrite(
    tf: Any,
    flat: Any,
    scratch: Any,
    region: _Region,
    cuts: Mapping[str, str],
    fetches: Sequence[str],
    ops: dict[str, int],
) -> DistinctPlan:
    """``flat`` with a gather by each row's index after every tensor of a region that
    something outside it reads (or that is fetched); in a region, a Unique's distinct
    values are its input's values and a gather by its indices an identity."""
    from tensorflow.core.framework import attr_value_pb2, node_def_pb2, tensor_shape_pb2

    out = type(flat)()
    out.CopyFrom(flat)
    rows: dict[str, str] = {}
    for index, name in enumerate(cuts):
        if ops[name]:
            rows[name] = f"{ROWS_SCOPE}/rows_{index}"
            node = out.node.add(name=rows[name], op="Placeholder")
            node.attr["dtype"].type = tf.int32.as_datatype_enum
            node.attr["shape"].shape.CopyFrom(
                tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1)]
                )
            )
    axis = out.node.add(name=f"{ROWS_SCOPE}/axis", op="Const")
    axis.attr["dtype"].type = tf.int32.as_datatype_enum
    axis.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(0, tf.int32))
    gathered: dict[str, str] = {}

    def gather(tensor: str) -> str:
        name, _, port = tensor.partition(":")
        key = f"{name}:{port or 0}"
        if key not in gathered:
            source = scratch.get_tensor_by_name(key)
            node = node_def_pb2.NodeDef(name=f"{ROWS_SCOPE}/{name}_{port or 0}", op="GatherV2")
            node.input.extend([key, rows[region.owner[name]], axis.name])
            node.attr["Tparams"].type = source.dtype.as_datatype_enum
            node.attr["Tindices"].type = tf.int32.as_datatype_enum
            node.attr["Taxis"].type = tf.int32.as_datatype_enum
            node.attr["batch_dims"].CopyFrom(attr_value_pb2.AttrValue(i=0))
            out.node.append(node)
            gathered[key] = f"{node.name}:0"
        return gathered[key]

    def moved(name: str) -> bool:
        return name in region.owner and region.owner[name] in rows

    # A moved Unique's distinct values, read in its region: the values it was given.
    values = {
        node.name: node.input[0] for node in out.node if node.op == "Unique" and moved(node.name)
    }
    for node in list(out.node):
        if node.name.startswith(ROWS_SCOPE + "/"):
            continue
        if moved(node.name):
            if node.op == "GatherV2" and region.domains[node.name] == VALUES:
                _as_identity(node)  # a gather back by a Unique's indices
            for i, source in enumerate(node.input):
                name, _, port = source.partition(":")
                if name in values and port in ("", "0"):
                    node.input[i] = values[name]
            continue
        for i, source in enumerate(node.input):
            if source.startswith("^"):
                continue
            if moved(source.partition(":")[0]):
                node.input[i] = gather(source)
    outputs = [gather(t) if moved(t.partition(":")[0]) else t for t in fetches]
    return DistinctPlan(out, rows, outputs, {n: c for n, c in ops.items() if n in rows})


def _as_identity(node: Any) -> None:
    """Turn a ``GatherV2`` node into an ``Identity`` of its params (control inputs kept)."""
    params = node.input[0]
    controls = [source for source in node.input if source.startswith("^")]
    dtype = type(node.attr["Tparams"])()
    dtype.CopyFrom(node.attr["Tparams"])
    node.op = "Identity"
    del node.input[:]
    node.input.extend([params, *controls])
    node.attr.clear()
    node.attr["T"].CopyFrom(dtype)
