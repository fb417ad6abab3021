"""ONNX export of a Sequential model: to_onnx(model, path=None, opset=None).

The graph computes what predict returns (Dropout omitted, BatchNorm with its
running statistics, the last layer's softmax or sigmoid applied), for a batch
of any size: one input "input" of shape (batch, *model.input_shape) in the
model's dtype (int64 indices when the first layer is an Embedding) and one
output "output" of shape (batch, *model.output_shape).

Each layer class has one exporter in EXPORTERS, a function that appends the
layer's nodes to the graph; a new layer kind adds one entry. Images stay
channels last (fusenn's and Keras's layout) between layers, except inside a run
of convolutions and pooling, which ONNX computes channels first: the graph
transposes once on the way in and once on the way out of such a run.

Recurrent layers are ONNX's RNN, GRU and LSTM ops with Keras's gate orders
mapped. A time-step mask (Embedding(mask_zero=True)) is exported exactly, for
any placement of the zeros: the real steps of each sample are moved to the
front (stably) and the op reads sequence_lens of them, which is what a state
that carries over masked steps computes; with return_sequences each step's
output is then gathered back to its place.
"""

import math

import numpy as np

from . import layers as L
from ._common import ELU_ALPHA, LEAKY_RELU_SLOPE

__all__ = ["to_onnx", "EXPORTERS", "DEFAULT_OPSET", "MIN_OPSET"]

DEFAULT_OPSET = 17  # run by onnxruntime >= 1.13 and most other runtimes
MIN_OPSET = 13      # Softmax on one axis; Squeeze, Unsqueeze and ReduceSum take axes as inputs
_INT64_MIN = -2**63


class _Graph:
    """The nodes and initializers of the graph being built, and the state of the
    value passed from layer to layer: whether it is channels first (inside a run of
    convolutions and pooling) and its time-step mask (a bool (batch, steps) tensor
    or None), as Sequential._forward carries masks."""

    def __init__(self, onnx, dtype, opset):
        self.onnx = onnx
        self.dtype = np.dtype(dtype)
        self.opset = opset
        self.nodes, self.initializers = [], []
        self.small = {}  # the initializer of each small constant, made once
        self.prefix = ""
        self.count = 0
        self.channels_first = False
        self.mask = None
        self.steps = None  # the number of steps the mask covers

    def name(self, hint):
        self.count += 1
        return f"{self.prefix}{hint}_{self.count}"

    def const(self, value, hint, dtype=None):
        """An initializer holding `value` (in the model's dtype unless given)."""
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key in self.small:
            return self.small[key]
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        if key is not None:
            self.small[key] = name
        return name

    def elem_type(self, dtype):
        """ONNX's number for a NumPy dtype."""
        return self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def ints(self, values, hint="ints"):
        return self.const(np.asarray(values, dtype=np.int64), hint, np.int64)

    def op(self, op_type, *inputs, outputs=1, **attrs):
        """Append a node; returns its output name (a tuple of them if outputs > 1)."""
        names = [self.name(op_type) for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names,
                                                     name=names[0], **attrs))
        return names[0] if outputs == 1 else tuple(names)

    def reduce(self, op_type, x, axes, keepdims=0):
        """ReduceMean / ReduceMax / ReduceSum over `axes` (an input from opset 18
        on, from 13 on for ReduceSum; an attribute before)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.ints(axes, "axes"), keepdims=keepdims)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims)

    def squeeze(self, x, axes):
        return self.op("Squeeze", x, self.ints(axes, "axes"))

    def unsqueeze(self, x, axes):
        return self.op("Unsqueeze", x, self.ints(axes, "axes"))

    def reverse(self, x, axis):
        return self.op("Slice", x, self.ints([-1], "starts"), self.ints([_INT64_MIN], "ends"),
                       self.ints([axis], "axes"), self.ints([-1], "steps"))

    def channels_last(self, x):
        """x as images (batch, height, width, channels)."""
        if self.channels_first:
            self.channels_first = False
            return self.op("Transpose", x, perm=[0, 2, 3, 1])
        return x

    def to_channels_first(self, x):
        """x as images (batch, channels, height, width), as ONNX's Conv and pooling take them."""
        if not self.channels_first:
            self.channels_first = True
            return self.op("Transpose", x, perm=[0, 3, 1, 2])
        return x


# ---- activations ----------------------------------------------------------------------

_SQRT1_2 = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_TANH_CUBIC = 0.044715


def _activation(g, x, name):
    """act(x) elementwise (softmax over the features: channels last, or axis 1
    of channels-first images)."""
    if name == "identity":
        return x
    if name in ("sigmoid", "tanh", "relu", "softplus"):
        return g.op(name.capitalize(), x)
    if name == "leaky_relu":
        if g.dtype == np.float32:
            return g.op("LeakyRelu", x, alpha=LEAKY_RELU_SLOPE)
        # the attribute is a float32: 0.01 x in float64 needs the slope as a tensor
        slope = g.op("Mul", x, g.const(LEAKY_RELU_SLOPE, "slope"))
        return g.op("Where", g.op("Greater", x, g.const(0, "zero")), x, slope)
    if name == "elu":
        return g.op("Elu", x, alpha=ELU_ALPHA)
    if name == "softmax":
        return g.op("Softmax", x, axis=1 if g.channels_first else -1)
    if name == "swish":
        return g.op("Mul", x, g.op("Sigmoid", x))
    if name == "gelu":  # x (1 + erf(x / sqrt 2)) / 2
        erf = g.op("Erf", g.op("Mul", x, g.const(_SQRT1_2, "inv_sqrt2")))
        half = g.op("Mul", g.op("Add", erf, g.const(1, "one")), g.const(0.5, "half"))
        return g.op("Mul", x, half)
    if name == "gelu_tanh":  # x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), as fusenn computes it
        c = 2 * _SQRT_2_OVER_PI
        inner = g.op("Add", g.const(c, "c"), g.op("Mul", g.op("Mul", x, x),
                                                   g.const(c * _GELU_TANH_CUBIC, "ck")))
        return g.op("Mul", x, g.op("Sigmoid", g.op("Mul", x, inner)))
    raise ValueError(f"no ONNX export for activation {name!r}")


# ---- layers: each exporter takes (graph, layer, x) and returns the layer's output ----------

def _dense(g, layer, x):
    x = g.channels_last(x)
    W, b = g.const(layer.W, "W"), g.const(layer.b, "b")
    if len(layer.input_shape) == 1:
        z = g.op("Gemm", x, W, b)
    else:  # every step of a sequence
        z = g.op("Add", g.op("MatMul", x, W), b)
    return _activation(g, z, layer.activation)


def _identity(g, layer, x):
    return x


def _batchnorm(g, layer, x):
    """The affine map of the running statistics, folded in float64:
    x scale + shift, scale = gamma / sqrt(var + eps), shift = beta - mean scale."""
    scale = layer.gamma.astype(np.float64) / np.sqrt(layer.running_var.astype(np.float64)
                                                     + layer.eps)
    shift = layer.beta.astype(np.float64) - layer.running_mean.astype(np.float64) * scale
    if g.channels_first:  # per channel of (batch, channels, height, width)
        scale, shift = scale[:, None, None], shift[:, None, None]
    return g.op("Add", g.op("Mul", x, g.const(scale, "scale")), g.const(shift, "shift"))


def _reshape(g, layer, x):
    """Row-major over the channels-last sample, as fusenn reshapes."""
    return g.op("Reshape", g.channels_last(x), g.ints([-1, *layer.output_shape], "shape"))


def _onnx_pads(pads):
    (top, bottom), (left, right) = pads
    return [top, left, bottom, right]


def _conv2d(g, layer, x):
    x = g.to_channels_first(x)
    kernel = g.const(np.transpose(layer.kernel, (3, 2, 0, 1)), "kernel")  # (out, in, kh, kw)
    inputs = [x, kernel] + ([g.const(layer.bias, "bias")] if layer.use_bias else [])
    z = g.op("Conv", *inputs, kernel_shape=list(layer.kernel_size), strides=list(layer.strides),
             dilations=list(layer.dilation_rate), pads=_onnx_pads(layer.pads))
    return _activation(g, z, layer.activation)


def _pooling2d(g, layer, x):
    x = g.to_channels_first(x)
    window = dict(kernel_shape=list(layer.pool_size), strides=list(layer.strides),
                  pads=_onnx_pads(layer.pads))
    if layer.mode == "max":  # padded cells are never the maximum
        return g.op("MaxPool", x, **window)
    return g.op("AveragePool", x, count_include_pad=0, **window)  # averages of the cells inside


def _global_pooling(g, layer, x):
    if layer.uses_mask and g.mask is not None:
        return _masked_global_pooling(g, layer, x)
    axes = [2, 3] if g.channels_first else list(range(1, len(layer.input_shape)))
    g.channels_first = False
    return g.reduce("ReduceMean" if layer.mode == "avg" else "ReduceMax", x, axes)


def _masked_global_pooling(g, layer, x):
    """Over each sample's real steps; a sample with none gives 0 (as fusenn)."""
    real = g.unsqueeze(g.mask, [2])                                  # (batch, steps, 1)
    count = g.reduce("ReduceSum", g.op("Cast", real, to=g.elem_type(g.dtype)), [1])  # (batch, 1)
    if layer.mode == "avg":
        total = g.reduce("ReduceSum", g.op("Where", real, x, g.const(0, "zero")), [1])
        return g.op("Div", total, g.op("Max", count, g.const(1, "one")))
    best = g.reduce("ReduceMax", g.op("Where", real, x, g.const(-np.inf, "minus_inf")), [1])
    return g.op("Where", g.op("Greater", count, g.const(0, "zero")), best, g.const(0, "zero"))


def _embedding(g, layer, x):
    if layer.mask_zero:
        g.mask = g.op("Not", g.op("Equal", x, g.ints(0, "zero")))
        g.steps = layer.input_shape[0]
    return g.op("Gather", g.const(layer.embeddings, "embeddings"), x, axis=0)


# ONNX's recurrent ops name their activations; (name, alpha) per fusenn activation.
_RNN_ACTIVATIONS = {"identity": ("Affine", 1.0), "sigmoid": ("Sigmoid", None),
                    "tanh": ("Tanh", None), "relu": ("Relu", None),
                    "leaky_relu": ("LeakyRelu", LEAKY_RELU_SLOPE), "elu": ("Elu", ELU_ALPHA),
                    "softplus": ("Softplus", None)}
# (ONNX op, order of Keras's gate blocks in ONNX's): GRU z, r, h in both; LSTM
# Keras i, f, c, o, ONNX i, o, f, c.
_RECURRENT_OPS = {L.SimpleRNN: ("RNN", [0]), L.GRU: ("GRU", [0, 1, 2]),
                  L.LSTM: ("LSTM", [0, 3, 1, 2])}


def _recurrent(g, layer, x):
    op_type, order = _RECURRENT_OPS[type(layer)]
    u = layer.units

    def onnx_gates(a):  # Keras's (..., G u) blocks reordered, as ONNX's (G u, ...) rows
        blocks = np.split(np.asarray(a), len(order), axis=-1)
        return np.concatenate([blocks[k] for k in order], axis=-1).T

    bias = layer.bias
    if op_type == "GRU" and layer.reset_after:  # [input bias, recurrent bias]
        input_bias, recurrent_bias = bias[0], bias[1]
    else:
        input_bias, recurrent_bias = bias, np.zeros_like(bias)
    W = g.const(onnx_gates(layer.kernel)[None], "W")
    R = g.const(onnx_gates(layer.recurrent_kernel)[None], "R")
    B = g.const(np.concatenate([onnx_gates(input_bias), onnx_gates(recurrent_bias)])[None], "B")

    names = ([layer.recurrent_activation] if op_type != "RNN" else []) + [layer.activation]
    if op_type == "LSTM":
        names.append(layer.activation)
    for name in names:
        if name not in _RNN_ACTIVATIONS:
            raise ValueError(f"{layer!r} cannot be exported: ONNX's {op_type} has no activation "
                             f"{name!r} (it has {', '.join(_RNN_ACTIVATIONS)})")
    attrs = {"hidden_size": u, "activations": [_RNN_ACTIVATIONS[n][0] for n in names]}
    alphas = [_RNN_ACTIVATIONS[n][1] for n in names]
    if any(a is not None for a in alphas):  # consumed in order by the activations taking one
        attrs["activation_alpha"] = [a for a in alphas if a is not None]
        if "Affine" in attrs["activations"]:
            attrs["activation_beta"] = [0.0] * attrs["activations"].count("Affine")
    if op_type == "GRU":
        attrs["linear_before_reset"] = int(layer.reset_after)

    x = g.channels_last(x)
    if g.mask is not None:
        return _masked_recurrent(g, layer, x, op_type, attrs, W, R, B)
    steps = g.op("Transpose", x, perm=[1, 0, 2])                     # (steps, batch, features)
    direction = "reverse" if layer.go_backwards else "forward"
    Y, Y_h = g.op(op_type, steps, W, R, B, outputs=2, direction=direction, **attrs)
    if not layer.return_sequences:
        return g.squeeze(Y_h, [0])
    Y = g.squeeze(Y, [1])
    if layer.go_backwards:  # ONNX keeps the steps in place; Keras returns them in reading order
        Y = g.reverse(Y, 0)
    return g.op("Transpose", Y, perm=[1, 0, 2])


def _masked_recurrent(g, layer, x, op_type, attrs, W, R, B):
    """The recurrence over each sample's real steps only, in reading order: they
    are moved to the front (stably) and the op reads sequence_lens of them. A
    sample with no real step gives zeros (its length is clamped to 1 for the op,
    as ONNX does not define sequence_lens 0)."""
    T = layer.input_shape[0]
    real = g.mask
    if layer.go_backwards:  # reading order: the steps (and their mask) reversed
        x, real = g.reverse(x, 1), g.reverse(real, 1)
    real = g.op("Cast", real, to=g.elem_type(np.int64))              # (batch, steps)
    count = g.reduce("ReduceSum", real, [1])                         # (batch,)
    # the real steps first, each group in step order: sort the keys t + T [masked]
    keys = g.op("Add", g.op("Mul", g.op("Sub", g.ints(1, "one"), real), g.ints(T, "T")),
                g.ints(np.arange(T), "positions"))
    _, order = g.op("TopK", keys, g.ints([T], "T"), outputs=2, axis=1, largest=0, sorted=1)
    packed = g.op("Transpose", _gather_steps(g, x, order), perm=[1, 0, 2])
    lengths = g.op("Cast", g.op("Max", count, g.ints(1, "one")), to=g.elem_type(np.int32))
    Y, Y_h = g.op(op_type, packed, W, R, B, lengths, outputs=2, direction="forward", **attrs)
    zero = g.const(0, "zero")
    if not layer.return_sequences:
        some = g.unsqueeze(g.op("Greater", count, g.ints(0, "zero")), [1])
        return g.op("Where", some, g.squeeze(Y_h, [0]), zero)
    # step t's output: the state after the real steps up to t (zeros before the first)
    seen = g.op("CumSum", real, g.ints(1, "axis"))                   # (batch, steps)
    last = g.op("Max", g.op("Sub", seen, g.ints(1, "one")), g.ints(0, "zero"))
    Y = _gather_steps(g, g.op("Transpose", g.squeeze(Y, [1]), perm=[1, 0, 2]), last)
    started = g.unsqueeze(g.op("Greater", seen, g.ints(0, "zero")), [2])
    return g.op("Where", started, Y, zero)


def _gather_steps(g, x, index):
    """out[n, t] = x[n, index[n, t]] for x (batch, steps, features), index (batch, steps)."""
    return g.op("GatherND", x, g.unsqueeze(index, [2]), batch_dims=1)


EXPORTERS = {
    L.Dense: _dense, L.Dropout: _identity, L.BatchNorm: _batchnorm,
    L.Reshape: _reshape, L.Flatten: _reshape,
    L.Conv2D: _conv2d, L.MaxPooling2D: _pooling2d, L.AveragePooling2D: _pooling2d,
    L.GlobalAveragePooling2D: _global_pooling, L.GlobalMaxPooling2D: _global_pooling,
    L.GlobalAveragePooling1D: _global_pooling, L.GlobalMaxPooling1D: _global_pooling,
    L.Embedding: _embedding, L.SimpleRNN: _recurrent, L.GRU: _recurrent, L.LSTM: _recurrent,
}


def to_onnx(model, path=None, opset=None):
    """The model as an onnx.ModelProto computing predict's outputs; written to
    `path` too when given. opset: the ONNX operator set (default DEFAULT_OPSET,
    at least MIN_OPSET). The input "input" and the output "output" have a dynamic
    batch dimension. Needs the `onnx` package (pip install fusenn[onnx])."""
    try:
        import onnx
    except ImportError:
        raise ImportError("to_onnx needs the onnx package: pip install onnx "
                          "(or fusenn[onnx])") from None
    model._require_built()
    opset = DEFAULT_OPSET if opset is None else opset
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or \
            not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an int in [{MIN_OPSET}, {newest}] (the newest the "
                         f"installed onnx knows), got {opset!r}")
    missing = [(i, layer) for i, layer in enumerate(model.layers)
               if type(layer) not in EXPORTERS]
    if missing:
        i, layer = missing[0]
        raise TypeError(f"cannot export layer {i + 1} ({layer.name}) to ONNX: there is no "
                        f"exporter for {type(layer).__module__}.{type(layer).__qualname__} "
                        f"(fusenn.onnx_export.EXPORTERS has one for "
                        f"{', '.join(cls.__name__ for cls in EXPORTERS)})")
    later = [(i, layer) for i, layer in enumerate(model.layers) if i and layer.reads_indices]
    if later:  # the graph's input is the only integer tensor
        i, layer = later[0]
        raise ValueError(f"cannot export layer {i + 1} ({layer.name}) to ONNX: it reads integer "
                         f"indices, which only the first layer can")

    g = _Graph(onnx, model.dtype, int(opset))
    x = "input"
    for i, layer in enumerate(model.layers):
        g.prefix = f"{type(layer).__name__.lower()}{i + 1}/"
        x = EXPORTERS[type(layer)](g, layer, x)
        out = layer.output_shape  # the mask lasts while outputs keep its steps (_forward)
        if g.mask is not None and not (len(out) >= 2 and out[0] == g.steps):
            g.mask = None
    g.prefix = ""
    x = g.channels_last(x)
    if x == "input":  # a network of dropouts only
        x = g.op("Identity", x)
    for node in g.nodes:  # the last value is the graph's output
        for names in (node.input, node.output):
            names[:] = ["output" if name == x else name for name in names]

    helper = onnx.helper
    input_type = np.int64 if model.layers[0].reads_indices else model.dtype
    graph = helper.make_graph(
        g.nodes, "fusenn.Sequential",
        [helper.make_tensor_value_info("input", g.elem_type(input_type),
                                       ["batch", *model.input_shape])],
        [helper.make_tensor_value_info("output", g.elem_type(model.dtype),
                                       ["batch", *model.output_shape])],
        g.initializers)
    opsets = [helper.make_opsetid("", g.opset)]
    from . import __version__
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="fusenn",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, path)
    return proto
