"""torch -> ONNX -> hetee: train a small CNN, export it, upload it encrypted
as the model owner, query it as a data provider, and measure the accuracy.

Needs a running server (`hetee serve --data-dir store`) and `hetee` /
`hetee-enclave` on PATH (or HETEE_ENCLAVE_BINARY) for `hetee.measure()`.
Run from the repository root: `python python/examples/torch_mnist.py`.
"""

import gzip
import os

import numpy as np
import torch
from torch import nn

import hetee


def idx(path):
    raw = gzip.open(path).read()
    if int.from_bytes(raw[:4], "big") == 0x0803:  # images: [N, 1, 28, 28] in [0, 1]
        return (np.frombuffer(raw, np.uint8, offset=16) / np.float32(255)).reshape(-1, 1, 28, 28)
    return np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)  # labels


x = idx("data/mnist/t10k-images-idx3-ubyte.gz").astype(np.float32)
y = idx("data/mnist/t10k-labels-idx1-ubyte.gz")
# The repository bundles the 10,000 MNIST test images: train on the first
# 8,000, evaluate on the last 2,000 (held out).
x_train, y_train, x_test, y_test = x[:8000], y[:8000], x[8000:], y[8000:]

# 1. Train (a minute on 2 cores).
torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10),
)
opt = torch.optim.Adam(net.parameters(), lr=2e-3)
for epoch in range(3):
    for i in torch.randperm(len(x_train)).split(64):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x_train[i])), torch.from_numpy(y_train[i]))
        loss.backward()
        opt.step()

# 2. Export to ONNX.
net.eval()
torch.onnx.export(net, torch.zeros(1, 1, 28, 28), "cnn.onnx", dynamo=False, opset_version=13)

# 3. Model owner: pin the enclave, upload the model encrypted (quantized on
#    256 calibration images), get its id.
server = os.environ.get("HETEE_SERVER", "127.0.0.1:8470")
measurement = hetee.measure()  # in production: the value the enclave's publisher prints
owner = hetee.ModelOwner(server, measurement, "owner.key", allow_sim=True)  # sim: testing only
model_id = owner.upload("cnn.onnx", calib=x_train[:256])

# 4. Data provider: encrypted inference on held-out images.
n = int(os.environ.get("IMAGES", "200"))
client = hetee.Client(server, measurement, allow_sim=True)
logits = client.infer(model_id, x_test[:n])
secure_acc = (logits.argmax(1) == y_test[:n]).mean()
with torch.no_grad():
    float_acc = (net(torch.from_numpy(x_test[:n])).argmax(1).numpy() == y_test[:n]).mean()

# The secure logits equal the plaintext integer reference bit for bit.
reference = hetee.run("cnn.onnx", x_test[:n], calib=x_train[:256], plaintext=True)
assert np.array_equal(logits, reference)
print(f"model {model_id}, {n} held-out images: secure accuracy {secure_acc:.2%} "
      f"(float model {float_acc:.2%}); logits bit-identical to the integer reference")
