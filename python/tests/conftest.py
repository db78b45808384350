"""Fixtures: a real `hetee serve` (the release binary cargo built) on a free
loopback port with a temp data dir, the bundled MNIST test images, and the
CLI as a subprocess for reference outputs.

HETEE_BIN names the `hetee` executable (default: target/release/hetee of
this repository); the enclave binary is the `hetee-enclave` beside it.
"""

import contextlib
import gzip
import os
import pathlib
import subprocess
import threading

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _hetee_bin() -> pathlib.Path:
    return pathlib.Path(os.environ.get("HETEE_BIN", ROOT / "target" / "release" / "hetee"))


@pytest.fixture(scope="session")
def hetee_bin() -> pathlib.Path:
    b = _hetee_bin()
    if not b.is_file():
        pytest.fail(f"no hetee binary at {b}: run `cargo build --release` or set HETEE_BIN")
    return b


@pytest.fixture(scope="session")
def enclave_bin(hetee_bin) -> pathlib.Path:
    b = hetee_bin.parent / "hetee-enclave"
    if not b.is_file():
        pytest.fail(f"no hetee-enclave beside {hetee_bin}")
    return b


def cli(hetee_bin, *args, check=True) -> subprocess.CompletedProcess:
    """Runs the hetee CLI; fails the test with its output if it fails."""
    r = subprocess.run([str(hetee_bin), *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        pytest.fail(f"hetee {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr}")
    return r


class Server:
    """A running `hetee serve`."""

    def __init__(self, proc: subprocess.Popen, addr: str, measurement: str, log: list):
        self.proc = proc
        self.addr = addr
        self.measurement = measurement
        self.log = log


@contextlib.contextmanager
def start_server(hetee_bin, data_dir, *extra):
    """`hetee serve` on a free loopback port with its store in `data_dir`
    (extra serve arguments, e.g. TLS); stopped on exit."""
    proc = subprocess.Popen(
        [str(hetee_bin), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    addr = measurement = None
    # The server prints its measurement, then the address it listens on.
    timer = threading.Timer(60, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("enclave measurement "):
                measurement = line.split()[-1]
            if line.startswith("listening on "):
                addr = line.split()[-1]
                break
    finally:
        timer.cancel()
    if addr is None:
        proc.kill()
        proc.wait()
        pytest.fail("hetee serve did not start:\n" + "".join(log))
    try:
        yield Server(proc, addr.removeprefix("http://"), measurement, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server(hetee_bin, enclave_bin, tmp_path_factory):
    with start_server(hetee_bin, tmp_path_factory.mktemp("store")) as s:
        yield s


def _idx_images(name: str, n: int) -> np.ndarray:
    with gzip.open(ROOT / "data" / "mnist" / name) as f:
        raw = f.read()
    count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    assert int.from_bytes(raw[0:4], "big") == 0x0803 and n <= count
    px = np.frombuffer(raw, dtype=np.uint8, count=n * rows * cols, offset=16)
    return (px.astype(np.float32) / np.float32(255.0)).reshape(n, 1, rows, cols)


@pytest.fixture(scope="session")
def mnist_x() -> np.ndarray:
    """The first 4 MNIST test images, [4, 1, 28, 28] float32 in [0, 1]."""
    return _idx_images("t10k-images-idx3-ubyte.gz", 4)


@pytest.fixture(scope="session")
def mnist_labels() -> np.ndarray:
    with gzip.open(ROOT / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        raw = f.read()
    return np.frombuffer(raw, dtype=np.uint8, offset=8)


@pytest.fixture(scope="session")
def mnist_calib() -> np.ndarray:
    """The first 64 images of the bundled calibration set."""
    return _idx_images("calib-images-idx3-ubyte.gz", 64)


@pytest.fixture(scope="session")
def cli_run(hetee_bin, tmp_path_factory):
    """`hetee run ... --output y.npy [--plaintext]` as a function returning y."""
    d = tmp_path_factory.mktemp("cli_run")
    count = [0]

    def go(model, x, calib=None, plaintext=True):
        count[0] += 1
        xin, yout = d / f"x{count[0]}.npy", d / f"y{count[0]}.npy"
        np.save(xin, x)
        args = ["run", "--model", model, "--input", xin, "--output", yout]
        if calib is not None:
            cin = d / f"c{count[0]}.npy"
            np.save(cin, calib)
            args += ["--calib", cin]
        if plaintext:
            args.append("--plaintext")
        cli(hetee_bin, *args)
        return np.load(yout)

    return go


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bits of a float32 array, for bit-for-bit comparisons."""
    assert a.dtype == np.float32, a.dtype
    return np.ascontiguousarray(a).view(np.uint32)
