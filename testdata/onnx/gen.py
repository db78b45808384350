#!/usr/bin/env python3
"""Generate the small ONNX test models in this directory (seeded random weights).

Not needed by CI: the .onnx files and manifest.json are committed. To regenerate:

    pip install torch onnx onnxruntime numpy
    python3 testdata/onnx/gen.py            # writes next to this script

All torch models are exported with opset 13, no constant folding, input name
"input", output name "logits", dynamic batch dimension "N".

Weights start from torch's default init and are then rescaled with a
calibration batch of uniform [0,1) inputs so that every pre-ReLU channel has
std ~1 and mean ~+0.3 (so ~60 % of activations are non-zero after ReLU).

manifest.json is a list of
    {"file", "input_shape" ([C,H,W] or [F]), "classes", "expect_error",
     "ref_output"}
where "ref_output" is the onnxruntime output ([2][classes]) for a batch of
N=2 deterministic inputs:
    flat index i over the whole [2, *input_shape] tensor (row-major):
    x[i] = (float32)((i * 7919) % 1009) / (float32)1009
"""
import json
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 1234
EXPORT_KW = dict(dynamo=False, opset_version=13, do_constant_folding=False,
                 input_names=["input"], output_names=["logits"],
                 dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})


def ref_input(shape, n=2):
    total = n * int(np.prod(shape))
    i = np.arange(total, dtype=np.int64)
    x = ((i * 7919) % 1009).astype(np.float32) / np.float32(1009)
    return x.reshape([n] + list(shape))


# --------------------------------------------------------------- models

class Seq(nn.Module):
    """nn.Sequential-like wrapper so the exported node names stay simple."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for l in self.layers:
            x = l(x)
        return x


class ReshapeFlatten(nn.Module):
    """Like gap.onnx but flattens with a constant-shape x.view(-1, 7)."""

    def __init__(self):
        super().__init__()
        self.body = Seq(nn.Conv2d(4, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 7, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(7, 3)

    def forward(self, x):
        return self.fc(self.body(x).view(-1, 7))


class MatMulAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 12) / 4.0)
        self.b = nn.Parameter(torch.randn(12) * 0.1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(torch.relu(torch.matmul(x, self.w) + self.b))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 projection shortcut where the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(y + (x if self.proj is None else self.proj(x)))


class Residual(nn.Module):
    """Stem, an identity block and a projection block, global pooling, head."""

    def __init__(self):
        super().__init__()
        self.stem = Seq(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b1 = BasicBlock(6, 6, 1)
        self.b2 = BasicBlock(6, 8, 2)
        self.head = Seq(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.b2(self.b1(self.stem(x))))


class Inception(nn.Module):
    """Two branches concatenated along the channels, MaxPool with ceil_mode."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 3, 1)
        self.b = nn.Conv2d(4, 5, 3, padding=1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.fc = nn.Linear(8 * 5 * 5, 5)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.fc(torch.flatten(self.pool(y), 1))


class Mobile(nn.Module):
    """Depthwise-separable block with ReLU6, then a grouped dilated conv."""

    def __init__(self):
        super().__init__()
        self.body = Seq(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU6(),
            nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=3), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 6))

    def forward(self, x):
        return self.body(x)


class Affine(nn.Module):
    """Per-channel and scalar Sub / Div / Mul / Add by constants."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("shift", torch.tensor([0.1, -0.2, 0.3, 0.0]).view(4, 1, 1))
        self.register_buffer("scale", torch.tensor([0.5, 1.5, 2.0, 0.8]).view(4, 1, 1))
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        y = torch.relu((self.conv(x) - self.shift) / self.scale)
        return self.fc(torch.flatten(y * 2.0 + 0.25, 1))


class PreOps(nn.Module):
    """BatchNorm, MaxPool and Tanh on the input, before the first conv."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6 * 6 * 6, 4)

    def forward(self, x):
        y = torch.tanh(nn.functional.max_pool2d(self.bn(x), 2))
        return self.fc(torch.flatten(torch.relu(self.conv(y)), 1))


class Nhwc(nn.Module):
    """An NHWC image input, transposed to NCHW before the first conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)
        self.fc = nn.Linear(5 * 8 * 6, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x.permute(0, 3, 1, 2)))
        return self.fc(torch.flatten(y, 1))


class Unflatten(nn.Module):
    """A flat input reshaped to an image for the first conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x.reshape(-1, 1, 8, 8)))
        return self.fc(torch.flatten(y, 1))


class TransposeMid(nn.Module):
    """A Transpose after a conv (refused: only the input may be transposed)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x)).permute(0, 2, 3, 1)
        return self.fc(torch.flatten(y, 1))


def torch_models():
    return [
        ("conv_pad_stride.onnx", [3, 17, 13], 5, None, lambda: Seq(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 6, 4, stride=3, padding=2), nn.ReLU(),
            nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(6 * 2 * 1, 5))),
        ("stride3_pad3.onnx", [2, 20, 20], 4, None, lambda: Seq(
            nn.Conv2d(2, 5, 7, stride=3, padding=3), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(), nn.Linear(5 * 4 * 4, 4))),
        ("gap.onnx", [4, 9, 11], 3, None, lambda: Seq(
            nn.Conv2d(4, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 7, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(7, 3))),
        ("reshape_flatten.onnx", [4, 9, 11], 3, None, ReshapeFlatten),
        ("avgpool.onnx", [1, 12, 12], 6, None, lambda: Seq(
            nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AvgPool2d(2, stride=2),
            nn.Conv2d(3, 4, 2), nn.ReLU(), nn.AvgPool2d(3, stride=1, padding=1),
            nn.Flatten(), nn.Linear(4 * 4 * 4, 6))),
        ("mlp.onnx", [20], 7, None, lambda: Seq(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 7))),
        ("matmul_add.onnx", [16], 5, None, MatMulAdd),
        ("deep_conv.onnx", [40, 16, 16], 10, None, lambda: Seq(
            nn.Conv2d(40, 40, 3, padding=1), nn.ReLU(),
            nn.Conv2d(40, 36, 5, stride=2, padding=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(36 * 8 * 8, 10))),
        ("sigmoid.onnx", [8], 4, None, lambda: Seq(nn.Linear(8, 4), nn.Sigmoid())),
        # Model graphs (appended, so the models above keep their seeds).
        ("residual.onnx", [3, 10, 10], 4, None, Residual),
        ("inception.onnx", [4, 9, 9], 5, None, Inception),
        ("mobile.onnx", [3, 12, 12], 6, None, Mobile),
        ("affine.onnx", [3, 8, 8], 3, None, Affine),
        ("conv_only.onnx", [2, 8, 8], 72, None, lambda: Seq(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3))),
        ("softmax.onnx", [12], 5, None, lambda: Seq(
            nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5), nn.Softmax(dim=1))),
        ("conv1d.onnx", [3, 20], 4, None, lambda: Seq(
            nn.Conv1d(3, 6, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2, ceil_mode=True),
            nn.Conv1d(6, 6, 3, groups=3, dilation=2), nn.ReLU(), nn.AvgPool1d(2),
            nn.Flatten(), nn.Linear(6 * 3, 4))),
        # Ops before the first linear layer.
        ("pre_ops.onnx", [3, 16, 16], 4, None, PreOps),
        ("nhwc.onnx", [10, 8, 3], 3, None, Nhwc),
        ("unflatten.onnx", [64], 3, None, Unflatten),
        ("transpose_mid.onnx", [2, 6, 6], 2, "Transpose", TransposeMid),
        # Dilated max pooling.
        ("dilated_pool.onnx", [2, 11, 11], 3, None, lambda: Seq(
            nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1, dilation=2),
            nn.Flatten(), nn.Linear(4 * 5 * 5, 3))),
    ]


# ---------------------------------------------------------- calibration

@torch.no_grad()
def calibrate(model, shape, gen):
    """Rescale weights layer by layer (data-driven) so activations are healthy."""
    x = torch.rand([64] + list(shape), generator=gen)
    mods = list(model.modules())
    layers = [m for m in mods if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    affine = [m for m in layers if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    for m in layers:
        captured = {}
        h = m.register_forward_hook(lambda mod, inp, out: captured.__setitem__("out", out))
        model(x)
        h.remove()
        out = captured["out"]
        dims = list(range(out.dim()))[:1] + list(range(2, out.dim()))
        mean, std = out.mean(dims), out.std(dims).clamp(min=1e-3)
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(mean + 0.2 * std * torch.randn(c, generator=gen))
            m.running_var.copy_((std ** 2) * (0.5 + 1.5 * torch.rand(c, generator=gen)))
            sign = torch.where(torch.rand(c, generator=gen) < 0.25, -1.0, 1.0)
            m.weight.copy_(sign * (0.5 + torch.rand(c, generator=gen)))
            m.bias.copy_(0.3 + 0.3 * (torch.rand(c, generator=gen) - 0.5))
            continue
        last = m is affine[-1]
        # per-output-channel normalisation: y' = (y - mean)/std + target
        shape_w = [-1] + [1] * (m.weight.dim() - 1)
        m.weight.div_(std.view(shape_w))
        target = 0.0 if last else 0.3 + 0.2 * (torch.rand(len(mean), generator=gen) - 0.5)
        if m.bias is not None:
            m.bias.copy_((m.bias - mean) / std + target)
    if isinstance(model, MatMulAdd):  # explicit MatMul + Add layer
        y = torch.matmul(x, model.w) + model.b
        mean, std = y.mean(0), y.std(0).clamp(min=1e-3)
        model.w.div_(std)
        model.b.copy_((model.b - mean) / std + 0.3)
        calibrate_linear_only(model.fc, torch.relu(torch.matmul(x, model.w) + model.b))


@torch.no_grad()
def calibrate_linear_only(fc, inp):
    y = fc(inp)
    mean, std = y.mean(0), y.std(0).clamp(min=1e-3)
    fc.weight.div_(std.view(-1, 1))
    fc.bias.copy_((fc.bias - mean) / std)


# --------------------------------------------------------- onnx-helper model

def gemm_alpha_beta(path, gen):
    rng = np.random.default_rng(SEED)
    b1 = (rng.standard_normal((5, 6)) * 0.8).astype(np.float32)
    # h = 0.5 * x @ B1^T + 2 * C1 with x ~ U[0,1): E[x @ B1^T] = 0.5 * rowsum(B1), so this C1
    # centres every hidden unit at +0.1 (~60 % active after Relu) plus a little noise.
    c1 = (-b1.sum(1) / 8.0 + 0.05 + 0.02 * rng.standard_normal(5)).astype(np.float32)
    b2 = (rng.standard_normal((5, 3)) * 0.6).astype(np.float32)
    c2 = (rng.standard_normal(3) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["input", "B1", "C1"], ["h"], name="gemm1", alpha=0.5, beta=2.0, transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
        helper.make_node("Gemm", ["hr", "B2", "C2"], ["logits"], name="gemm2", transB=0),
    ]
    graph = helper.make_graph(
        nodes, "gemm_alpha_beta",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(b1, "B1"), numpy_helper.from_array(c1, "C1"),
                     numpy_helper.from_array(b2, "B2"), numpy_helper.from_array(c2, "C2")])
    model = helper.make_model(graph, producer_name="hetee-testdata",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # same as the torch exports
    onnx.checker.check_model(model)
    onnx.save(model, path)


def auto_pad(path):
    """Convs with auto_pad SAME_UPPER (stride 1), SAME_LOWER (stride 2, even
    kernel: the extra row and column go before), and a VALID max pool."""
    rng = np.random.default_rng(SEED + 7)
    w1 = (rng.standard_normal((4, 2, 3, 3)) * 0.4).astype(np.float32)
    b1 = (0.1 + 0.05 * rng.standard_normal(4)).astype(np.float32)
    w2 = (rng.standard_normal((5, 4, 2, 2)) * 0.4).astype(np.float32)
    b2 = (0.1 + 0.05 * rng.standard_normal(5)).astype(np.float32)
    w3 = (rng.standard_normal((5 * 2 * 2, 3)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "W1", "B1"], ["a"], name="same_upper", auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu1"),
        helper.make_node("Conv", ["ar", "W2", "B2"], ["b"], name="same_lower", auto_pad="SAME_LOWER",
                         strides=[2, 2]),
        helper.make_node("Relu", ["b"], ["br"], name="relu2"),
        helper.make_node("MaxPool", ["br"], ["c"], name="valid_pool", auto_pad="VALID",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "W3"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "auto_pad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 7, 7])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "B1"),
                     numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(b2, "B2"),
                     numpy_helper.from_array(w3, "W3")])
    model = helper.make_model(graph, producer_name="hetee-testdata",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, path)


# ------------------------------------------------------------------- main

def check_with_ort(path, shape, classes):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x3 = np.random.default_rng(7).random([3] + list(shape), dtype=np.float32)
    y3 = sess.run(None, {"input": x3})[0].reshape(3, -1)
    assert y3.shape == (3, classes), y3.shape
    ref = sess.run(None, {"input": ref_input(shape)})[0].reshape(2, -1)
    assert ref.shape == (2, classes)
    return y3, ref


def relu_activity(model, shape):
    """Fraction of non-zero ReLU outputs on a random batch (for the report)."""
    acts = []
    hooks = [m.register_forward_hook(lambda mod, i, o: acts.append(float((o > 0).float().mean())))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        x = torch.rand([16] + list(shape))
        model(x)
        if isinstance(model, MatMulAdd):
            acts.append(float(((torch.matmul(x, model.w) + model.b) > 0).float().mean()))
    for h in hooks:
        h.remove()
    return acts


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else HERE
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(SEED)
    warnings.filterwarnings("ignore")
    manifest = []
    for idx, (fname, shape, classes, expect_error, ctor) in enumerate(torch_models()):
        torch.manual_seed(SEED + idx)
        gen = torch.Generator().manual_seed(SEED + 100 + idx)
        model = ctor().eval()
        calibrate(model, shape, gen)
        path = os.path.join(out_dir, fname)
        torch.onnx.export(model, torch.zeros([1] + list(shape)), path, **EXPORT_KW)
        m = onnx.load(path)
        onnx.checker.check_model(m)
        ops = [n.op_type for n in m.graph.node]
        assert "Identity" not in ops, f"{fname}: deduplicated initializers produced Identity nodes"
        y3, ref = check_with_ort(path, shape, classes)
        with torch.no_grad():
            out = model(torch.from_numpy(ref_input(shape)))
            ty = out.numpy().reshape(2, -1)
        assert np.abs(ty - ref).max() < 1e-4, (fname, np.abs(ty - ref).max())
        print(f"{fname:26s} {os.path.getsize(path):7d} B  ops={ops}  relu-active={['%.2f' % a for a in relu_activity(model, shape)]}")
        entry = {"file": fname, "input_shape": shape, "classes": classes,
                 "expect_error": expect_error, "ref_output": ref.tolist()}
        if out.dim() > 2:
            entry["output_shape"] = list(out.shape[1:])
        manifest.append(entry)

    # An op hetee refuses: sigmoid.onnx with its Sigmoid node turned into a
    # Hardmax (the same bytes with the op and node name renamed).
    path = os.path.join(out_dir, "unsupported_hardmax.onnx")
    with open(os.path.join(out_dir, "sigmoid.onnx"), "rb") as f:
        raw = f.read()
    assert raw.count(b"Sigmoid") == 2
    with open(path, "wb") as f:
        f.write(raw.replace(b"Sigmoid", b"Hardmax"))
    onnx.checker.check_model(onnx.load(path))
    _, ref = check_with_ort(path, [8], 4)
    manifest.append({"file": "unsupported_hardmax.onnx", "input_shape": [8], "classes": 4,
                     "expect_error": "Hardmax", "ref_output": ref.tolist()})

    path = os.path.join(out_dir, "gemm_alpha_beta.onnx")
    gemm_alpha_beta(path, None)
    m = onnx.load(path)
    ops = [n.op_type for n in m.graph.node]
    y3, ref = check_with_ort(path, [6], 3)
    # numpy reference
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    x = ref_input([6])
    h = np.maximum(0.5 * x @ init["B1"].T + 2.0 * init["C1"], 0)
    assert np.abs(h @ init["B2"] + init["C2"] - ref).max() < 1e-5
    print(f"{'gemm_alpha_beta.onnx':26s} {os.path.getsize(path):7d} B  ops={ops}  relu-active={(h > 0).mean():.2f}")
    manifest.append({"file": "gemm_alpha_beta.onnx", "input_shape": [6], "classes": 3,
                     "expect_error": None, "ref_output": ref.tolist()})

    path = os.path.join(out_dir, "auto_pad.onnx")
    auto_pad(path)
    _, ref = check_with_ort(path, [2, 7, 7], 3)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    print(f"{'auto_pad.onnx':26s} {os.path.getsize(path):7d} B  ops={ops}")
    manifest.append({"file": "auto_pad.onnx", "input_shape": [2, 7, 7], "classes": 3,
                     "expect_error": None, "ref_output": ref.tolist()})

    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        f.write("[\n" + ",\n".join(" " + json.dumps(e) for e in manifest) + "\n]\n")
    print(f"wrote {len(manifest)} models + manifest.json to {out_dir}")


if __name__ == "__main__":
    main()
