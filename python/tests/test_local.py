"""hetee.run (everything in this process) and the checks on arrays."""

import numpy as np
import pytest

import hetee
from conftest import ROOT, bits


def test_run_secure_equals_plaintext_bit_for_bit(mnist_x, cli_run):
    x = mnist_x[:3]
    secure = hetee.run("mnist", x)
    plain = hetee.run("mnist", x, plaintext=True)
    assert secure.dtype == np.float32 and secure.shape == (3, 10)
    assert np.array_equal(bits(secure), bits(plain))
    assert np.array_equal(bits(plain), bits(cli_run("mnist", x)))


def test_run_takes_onnx_bytes_or_a_path_with_a_calibration_array(mnist_x, mnist_calib, cli_run):
    path = ROOT / "models" / "e2dm.onnx"
    ref = cli_run(str(path), mnist_x, calib=mnist_calib)
    from_bytes = hetee.run(path.read_bytes(), mnist_x, mnist_calib, plaintext=True)
    from_path = hetee.run(path, mnist_x, mnist_calib, plaintext=True)
    assert np.array_equal(bits(from_bytes), bits(ref))
    assert np.array_equal(bits(from_path), bits(ref))
    # Another calibration set quantizes differently: the test can tell.
    other = hetee.run(path, mnist_x, mnist_calib[:2] * 0.5, plaintext=True)
    assert not np.array_equal(bits(other), bits(ref))
    with pytest.raises(hetee.HeteeError, match="calib"):
        hetee.run(path, mnist_x)


def _bad_arrays(x):
    nan = x.copy()
    nan[1, 0, 3, 4] = np.nan
    inf = x.copy()
    inf[0, 0, 0, 0] = np.inf
    return [
        (x.astype(np.float64), "dtype float64, expected float32"),
        (x.astype(np.uint8), "dtype uint8"),
        (x.reshape(len(x), 28, 28), r"shape \[4, 28, 28\].*\[N, 1, 28, 28\]"),
        (x.reshape(len(x), 784), "shape"),
        (x[:0], "no samples"),
        (nan, r"non-finite value \(NaN or Inf\) at flat index 872"),
        (inf, "non-finite"),
        (x.tolist(), "not a numpy array"),
        (np.float32(1.0), "scalar|not a numpy array"),
    ]


def test_bad_arrays_are_refused_by_run(mnist_x):
    for bad, msg in _bad_arrays(mnist_x):
        with pytest.raises(hetee.InputError, match=msg):
            hetee.run("mnist", bad, plaintext=True)
    with pytest.raises(ValueError, match="calibration set.*float32"):
        hetee.run("e2dm", mnist_x, mnist_x.astype(np.float64), plaintext=True)


def test_bad_arrays_are_refused_before_anything_is_sent(server, mnist_x):
    # No server at all: the array is refused before any connection.
    offline = hetee.Client("127.0.0.1:9", "00" * 32, allow_sim=True)
    for bad, msg in _bad_arrays(mnist_x):
        if "shape" in msg or "no samples" in msg:
            continue  # the shape comes from the enclave's query plan
        with pytest.raises(hetee.InputError, match=msg):
            offline.infer("00" * 16, bad)
    owner = hetee.ModelOwner("127.0.0.1:9", "00" * 32, "unused.key", allow_sim=True)
    with pytest.raises(ValueError, match="float32"):
        owner.upload("e2dm", mnist_x.astype(np.float64))


def test_bad_shapes_are_refused_against_the_query_plan(server, mnist_x, tmp_path):
    owner = hetee.ModelOwner(server.addr, server.measurement, tmp_path / "o.key", allow_sim=True)
    mid = owner.upload("e2dm")
    client = hetee.Client(server.addr, server.measurement, allow_sim=True)
    for bad, msg in _bad_arrays(mnist_x):
        with pytest.raises(hetee.InputError, match=msg):
            client.infer(mid, bad)
    assert issubclass(hetee.InputError, ValueError)
    assert issubclass(hetee.InputError, hetee.HeteeError)
    # The model still serves well-formed input, and nothing was counted.
    assert client.infer(mid, mnist_x[:1]).shape == (1, 10)
    assert owner.status(mid)["locked"] is False


def test_model_argument_errors():
    with pytest.raises(hetee.HeteeError, match="no bundled model is called 'nope'"):
        hetee.run("nope", np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(TypeError, match="model must be a str or os.PathLike"):
        hetee.run(42, np.zeros((1, 1, 28, 28), np.float32))
    assert "mnist" in hetee.bundled_models()


def test_run_releases_the_gil(mnist_x):
    import threading
    import time

    done = threading.Event()
    ticks = []

    def work():
        try:
            hetee.run("mnist", mnist_x[:2])
        finally:
            done.set()

    t = threading.Thread(target=work)
    t.start()
    time.sleep(0.05)
    # While the run works in Rust, this thread keeps running Python code.
    while not done.is_set():
        ticks.append(time.monotonic())
        time.sleep(0.01)
    t.join()
    assert len(ticks) > 20, len(ticks)
