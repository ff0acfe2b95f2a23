"""Uploaded ONNX graphs: operators of ONNX's own domains only, and every weight inside the file.

ONNX Runtime runs operators by domain: the default domain (and `ai.onnx.ml`) is the standard's tensor
math; any other domain is a custom or vendor operator. A tensor may also keep its data in an "external"
file named by a path in the graph, which ONNX Runtime would open (any file on the server, read as
weights). So the file is parsed (never run) and refused unless every node of the graph, its subgraphs
and its local functions is from `DOMAINS` (or calls one of those functions) and no tensor is external.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadRequest

DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


def refused(path: Path, why: str) -> BadRequest:
    return BadRequest(f"models/{path.name} was refused: {why}; an ONNX model may only use ONNX's own operators.")


def _tensors(graph):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices


def _check_nodes(path: Path, nodes, allowed: frozenset[str]) -> None:
    import onnx

    for node in nodes:
        if node.domain not in allowed:
            raise refused(
                path, f"node '{node.name or node.op_type}' is operator '{node.op_type}' of domain '{node.domain}'"
            )
        for attribute in node.attribute:
            tensors = [attribute.t] if attribute.HasField("t") else list(attribute.tensors)
            if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
                raise refused(path, f"node '{node.name or node.op_type}' keeps a tensor in an external file")
            graphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
            for graph in graphs:  # If / Loop / Scan bodies
                _check_graph(path, graph, allowed)


def _check_graph(path: Path, graph, allowed: frozenset[str]) -> None:
    import onnx

    for tensor in _tensors(graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise refused(path, f"tensor '{tensor.name}' keeps its data in an external file")
    _check_nodes(path, graph.node, allowed)


def check_onnx(path: Path) -> None:
    """Parse `path` without running it; 400 on custom domains or external data."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - not a parsable model is the upload's fault
        raise BadRequest(
            f"models/{path.name} is not a loadable ONNX model: {str(error).splitlines()[0][:200]}"
        ) from None
    imports = {opset.domain for opset in model.opset_import}
    functions = {(f.domain, f.name) for f in model.functions}
    local = frozenset(domain for domain, _ in functions)
    odd = sorted(imports - DOMAINS - local)
    if odd:
        raise refused(path, f"it imports operator domain '{odd[0]}'")
    allowed = DOMAINS | local
    for function in model.functions:
        if function.domain in DOMAINS:
            raise refused(path, f"its function '{function.name}' redefines an ONNX operator")
        _check_nodes(path, function.node, DOMAINS | local)
    for node in model.graph.node:  # a node of a local function's domain must call a function defined here
        if node.domain in local and (node.domain, node.op_type) not in functions:
            raise refused(path, f"node '{node.name or node.op_type}' calls '{node.op_type}', which it does not define")
    _check_graph(path, model.graph, allowed)
