"""Exact rewrites of a model's graph that onnxruntime runs faster, applied in memory when a pack loads.

onnxruntime's CPU PRelu kernel broadcasts its per-channel slope element by element: in buffalo_sc's
MobileFaceNet recogniser its 34 PRelu nodes took 47% of a run. Written as
`slope * x + (1 - slope) * Relu(x)` (equal for any slope: x when x > 0, slope * x otherwise) the same
network runs in about two thirds of the time, with embeddings equal to within 3e-6. Nothing is written to
disk: the rewritten model goes straight to the session.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper


def without_prelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each PRelu whose slope is a constant replaced by Mul, Relu, Mul and Add."""
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    complements: dict[str, onnx.TensorProto] = {}
    for node in model.graph.node:
        x, slope = (node.input[0], node.input[1]) if node.op_type == "PRelu" else ("", "")
        if slope not in constants:
            nodes.append(node)
            continue
        one_minus = f"{slope}__one_minus"
        if one_minus not in complements:
            complements[one_minus] = numpy_helper.from_array(
                (1 - numpy_helper.to_array(constants[slope])).astype(
                    numpy_helper.to_array(constants[slope]).dtype
                ),
                one_minus,
            )
        y = node.output[0]
        nodes += [
            helper.make_node("Mul", [x, slope], [f"{y}__negative"]),
            helper.make_node("Relu", [x], [f"{y}__relu"]),
            helper.make_node("Mul", [f"{y}__relu", one_minus], [f"{y}__positive"]),
            helper.make_node("Add", [f"{y}__negative", f"{y}__positive"], [y]),
        ]
    if not complements:
        return model
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    rewritten.graph.initializer.extend(complements.values())
    return rewritten
