#!/usr/bin/env python3
"""Train and export the bundled Fashion-MNIST models (resnet20.onnx, mobilenet.onnx).

Not needed by CI: the exported .onnx files are committed. To retrain:

    apt-get install dataset-fashion-mnist      # /usr/share/datasets/fashion-mnist/*.gz
    pip install torch onnx onnxruntime numpy
    nice -n 5 python3 models/train_resnet20.py --data /usr/share/datasets/fashion-mnist \
        --out models/ --model resnet20 --log /work/resnet_train.log [--write-data data/fashion]
    nice -n 5 python3 models/train_resnet20.py --data /usr/share/datasets/fashion-mnist \
        --out models/ --model mobilenet --threads 1 --log /work/mobilenet_train.log

DIR must hold the four Fashion-MNIST IDX files (same names as MNIST's:
train-images-idx3-ubyte.gz, ..., t10k-labels-idx1-ubyte.gz; raw or gzipped).
IDX I/O, the data bundling, the ONNX export and the onnxruntime check are
shared with models/train.py.

With `--write-data data/fashion` it also (re)writes the bundled data files:
t10k-{images,labels} (the 10,000 Fashion-MNIST test images) and
calib-{images,labels} (the first 512 training images), IDX format, gzip with
mtime 0.

A checkpoint is written after every epoch (`--ckpt`, default
/tmp/<model>_fashion.ckpt); rerunning the same command resumes from it.

Preprocessing used everywhere: float32 input = pixel / 255.0, shape
[N,1,28,28]; no mean/std normalisation.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import export, load_mnist, ort_accuracy, to_input, write_data  # noqa: E402

SEED = 20240601

LOG = None


def log(msg):
    print(msg, flush=True)
    if LOG:
        with open(LOG, "a") as f:
            f.write(msg + "\n")


# ------------------------------------------------------------------ models

class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU.

    The shortcut is the identity where the shape is unchanged and a
    1x1 conv (stride 2) + BN projection where it changes.
    """

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + sc)  # ONNX: Add(tensor, tensor) -> Relu


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20 (He et al. 2016, 3 stages x 3 BasicBlocks) for 1x28x28 input."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for b in range(3):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # -> GlobalAveragePool
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Note: in the two projection blocks (layers.3, layers.6) the biases of
        # bn2 and of the shortcut BN get identical gradients (both feed the same
        # Add) and no weight decay, so they stay equal; the exporter then stores
        # one initializer and aliases the other with an ONNX Identity node.

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.flatten(self.pool(x)))


def dw_sep(cin, cout, stride):
    """Depthwise conv3x3 (groups=cin) + BN + ReLU6, then pointwise 1x1 + BN + ReLU6."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU6(),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class MobileNetSmall(nn.Module):
    """Small MobileNet(v1)-style net: stem conv3x3 1->16, 4 depthwise-separable blocks."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            dw_sep(16, 32, 2),   # 28 -> 14
            dw_sep(32, 64, 2),   # 14 -> 7
            dw_sep(64, 64, 1),
            dw_sep(64, 128, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.features(x)


MODELS = {
    # name: (class, default epochs, max lr, weight decay)
    "resnet20": (ResNet20, 10, 0.1, 5e-4),
    "mobilenet": (MobileNetSmall, 20, 0.1, 1e-4),
}


# ---------------------------------------------------------------- training

def augment(x, gen, pad=2):
    """Random crop with `pad` px zero padding + random horizontal flip."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    rows = oy[:, None] + torch.arange(h)[None, :]                       # [n,h]
    cols = ox[:, None] + torch.arange(w)[None, :]                       # [n,w]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    nidx = torch.arange(n)[:, None, None]
    return xp[nidx, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@torch.no_grad()
def accuracy(model, x, y, bs=1000):
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += (model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(x)


def train(model, tr_x, tr_y, te_x, te_y, epochs, lr, wd, ckpt, bs=128, name="model", max_batches=None):
    gen = torch.Generator().manual_seed(SEED + 1)
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, nesterov=True)
    steps_per_epoch = (len(tr_x) + bs - 1) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                                pct_start=0.25, div_factor=10, final_div_factor=100)
    start, elapsed = 0, 0.0
    if ckpt and os.path.exists(ckpt):
        st = torch.load(ckpt, weights_only=False)
        assert st["name"] == name and st["epochs"] == epochs, f"{ckpt} is for another run"
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        start, elapsed = st["epoch"], st["elapsed"]
        log(f"[{name}] resumed from {ckpt} after epoch {start} ({elapsed:.0f}s so far)")
    for ep in range(start, epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(tr_x), generator=gen)
        tot, seen, correct = 0.0, 0, 0
        for bi, i in enumerate(range(0, len(tr_x), bs)):
            idx = perm[i:i + bs]
            xb, yb = augment(tr_x[idx], gen), tr_y[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            seen += len(idx)
            correct += (out.argmax(1) == yb).sum().item()
            if bi % 100 == 0:
                log(f"[{name}] epoch {ep + 1} batch {bi}/{steps_per_epoch} loss {tot / seen:.4f} "
                    f"lr {sched.get_last_lr()[0]:.4f} ({time.time() - t0:.0f}s)")
            if max_batches and bi + 1 >= max_batches:
                dt = time.time() - t0
                log(f"[{name}] benchmark: {max_batches} batches in {dt:.1f}s -> "
                    f"~{dt / max_batches * steps_per_epoch:.0f}s per epoch")
                return None
        acc = accuracy(model, te_x, te_y)
        dt = time.time() - t0
        elapsed += dt
        log(f"[{name}] epoch {ep + 1}/{epochs} loss {tot / seen:.4f} train acc {correct / seen * 100:.2f}% "
            f"test acc {acc * 100:.2f}% ({dt:.0f}s, total {elapsed / 60:.1f} min)")
        if ckpt:
            tmp = ckpt + ".tmp"
            torch.save({"name": name, "epochs": epochs, "epoch": ep + 1, "elapsed": elapsed,
                        "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": gen.get_state()}, tmp)
            os.replace(tmp, ckpt)
    model.eval()
    return accuracy(model, te_x, te_y), elapsed


def main():
    global LOG
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                    help="directory with the Fashion-MNIST IDX files")
    ap.add_argument("--out", default="models", help="output directory for the .onnx file")
    ap.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    ap.add_argument("--write-data", metavar="DIR", help="also write the bundled t10k/calib IDX.gz files here")
    ap.add_argument("--epochs", type=int, help="default: 10 (resnet20), 20 (mobilenet)")
    ap.add_argument("--lr", type=float, help="max learning rate of the one-cycle schedule")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; on a loaded 2-core machine 1 was ~4x faster than 2")
    ap.add_argument("--ckpt", help="checkpoint path (default /tmp/<model>_fashion.ckpt); 'none' disables")
    ap.add_argument("--log", help="append progress to this file too")
    ap.add_argument("--bench", type=int, metavar="BATCHES", help="only time this many training batches")
    args = ap.parse_args()
    LOG = args.log

    cls, epochs, lr, wd = MODELS[args.model]
    epochs = args.epochs or epochs
    lr = args.lr or lr
    ckpt = args.ckpt or f"/tmp/{args.model}_fashion.ckpt"
    if ckpt == "none" or args.bench:
        ckpt = None

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

    name = args.model
    torch.manual_seed(SEED)
    model = cls()
    nparams = sum(p.numel() for p in model.parameters())
    log(f"[{name}] {nparams} parameters, {epochs} epochs, max lr {lr}, wd {wd}, {args.threads} threads")
    res = train(model, tr_x, tr_y, te_x, te_y, epochs, lr, wd, ckpt, name=name, max_batches=args.bench)
    if res is None:
        return 0
    acc, elapsed = res
    path = os.path.join(args.out, f"{name}.onnx")
    ops = export(model, path)
    assert "BatchNormalization" in ops, "BatchNormalization was folded away"
    assert "GlobalAveragePool" in ops
    ort_acc, maxdiff = ort_accuracy(path, te_x_np, te_y_np, model)
    log(f"[{name}] ONNX op types: {sorted(set(ops))}")
    log(f"[{name}] ONNX node counts: " + ", ".join(f"{o} {ops.count(o)}" for o in sorted(set(ops))))
    log(f"[{name}] torch acc {acc * 100:.2f}%  onnxruntime acc {ort_acc * 100:.2f}%  "
        f"max |logit diff| {maxdiff:.2e}  training {elapsed / 60:.1f} min")
    assert abs(ort_acc - acc) < 1e-9 or maxdiff < 1e-3
    return 0


if __name__ == "__main__":
    sys.exit(main())
