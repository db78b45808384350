"""ModelOwner and Client against a real `hetee serve`: results bit-identical
to `hetee run --plaintext`, thin mode, receipts, policies and allow lists,
owner commands, and a refused enclave."""

import numpy as np
import pytest

import hetee
from conftest import ROOT, bits, cli

WRONG = "00" * 32


@pytest.fixture(scope="session")
def owner(server, tmp_path_factory):
    key = tmp_path_factory.mktemp("owner") / "owner.key"
    return hetee.ModelOwner(server.addr, server.measurement, key, allow_sim=True)


@pytest.fixture(scope="session")
def mnist_id(owner):
    """The bundled MNIST CNN, uploaded with its own calibration set."""
    return owner.upload("mnist", max_batch=4)


def test_measure_matches_the_cli_and_the_server(hetee_bin, enclave_bin, server, monkeypatch):
    m = hetee.measure(enclave_bin)
    assert len(m) == 64 and int(m, 16) >= 0
    assert m == cli(hetee_bin, "enclave", "measure").stdout.strip().splitlines()[-1]
    assert m == server.measurement
    # Found through the environment variable, then beside `hetee` on PATH.
    monkeypatch.setenv("HETEE_ENCLAVE_BINARY", str(enclave_bin))
    assert hetee.measure() == m
    monkeypatch.delenv("HETEE_ENCLAVE_BINARY")
    monkeypatch.setenv("PATH", str(hetee_bin.parent))
    assert hetee.find_enclave_binary() == str(enclave_bin.resolve())
    assert hetee.measure() == m
    # Another budget is another enclave.
    assert hetee.measure(enclave_bin, memory_budget_mib=512) != m
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(hetee.HeteeError, match="HETEE_ENCLAVE_BINARY"):
        hetee.measure()


def test_upload_then_infer_is_bit_identical_to_the_plaintext_cli(
    server, mnist_id, mnist_x, mnist_labels, cli_run
):
    client = hetee.Client(server.addr, server.measurement, allow_sim=True)
    y = client.infer(mnist_id, mnist_x)
    ref = cli_run("mnist", mnist_x)
    assert y.dtype == np.float32 and y.shape == (4, 10)
    assert np.array_equal(bits(y), bits(ref.reshape(y.shape)))
    # The model is a real classifier: these four are classified correctly.
    assert np.array_equal(y.argmax(1), mnist_labels[:4])


def test_thin_mode_gives_the_same_logits(server, mnist_id, mnist_x, cli_run):
    client = hetee.Client(server.addr, server.measurement, allow_sim=True)
    y = client.infer(mnist_id, mnist_x[:2], thin=True)
    ref = cli_run("mnist", mnist_x[:2])
    assert np.array_equal(bits(y), bits(ref.reshape(y.shape)))


def test_receipts_verify_under_the_pinned_measurement(server, mnist_id, mnist_x, tmp_path):
    client = hetee.Client(server.addr, server.measurement, allow_sim=True)
    y, receipts = client.infer(mnist_id, mnist_x[:1], receipts=True)
    assert y.shape == (1, 10) and len(receipts) == 1
    assert client.verify_receipts(receipts) == 1
    # A client pinning another measurement refuses them.
    other = hetee.Client(server.addr, WRONG, allow_sim=True)
    with pytest.raises(hetee.AttestationError):
        other.verify_receipts(receipts)


def test_a_wrong_measurement_is_refused_with_its_own_exception(
    server, mnist_id, mnist_x, tmp_path, hetee_bin
):
    client = hetee.Client(server.addr, WRONG, allow_sim=True)
    with pytest.raises(hetee.AttestationError, match="refusing the server's enclave.*measurement"):
        client.infer(mnist_id, mnist_x[:1])
    owner = hetee.ModelOwner(server.addr, WRONG, tmp_path / "k", allow_sim=True)
    with pytest.raises(hetee.AttestationError):
        owner.upload("e2dm")
    # The simulated platform needs allow_sim; the message is the CLI's.
    with pytest.raises(hetee.AttestationError) as e:
        hetee.Client(server.addr, server.measurement).infer(mnist_id, mnist_x[:1])
    np.save(tmp_path / "x.npy", mnist_x[:1])
    r = cli(
        hetee_bin, "infer", "--server", server.addr, "--model-id", mnist_id,
        "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
        "--expect-measurement", server.measurement, check=False,
    )
    assert r.returncode != 0
    assert r.stderr.strip() == f"error: {e.value}"
    assert issubclass(hetee.AttestationError, hetee.HeteeError)


def test_errors_carry_the_cli_messages(server, hetee_bin, tmp_path, mnist_x):
    with pytest.raises(hetee.HeteeError) as e:
        hetee.Client(server.addr, "abc")
    r = cli(
        hetee_bin, "infer", "--server", server.addr, "--model-id", "00" * 16,
        "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
        "--expect-measurement", "abc", check=False,
    )
    assert r.stderr.strip() == f"error: {e.value}"
    client = hetee.Client(server.addr, server.measurement, allow_sim=True)
    with pytest.raises(hetee.HeteeError, match="404"):
        client.infer("00" * 16, mnist_x[:1])
    with pytest.raises(hetee.HeteeError, match="CA file"):
        hetee.Client(server.addr, server.measurement, ca=tmp_path / "ca.pem")


def test_policy_and_allow_list(server, owner, tmp_path, mnist_x, mnist_calib, cli_run):
    allowed = hetee.Client(server.addr, server.measurement, tmp_path / "a.key", allow_sim=True)
    stranger = hetee.Client(server.addr, server.measurement, tmp_path / "b.key", allow_sim=True)
    onnx = str(ROOT / "models" / "e2dm.onnx")
    mid = owner.upload(
        onnx, mnist_calib, policy="top-3", budget=5, allow_clients=[allowed.public_key]
    )
    labels = allowed.infer(mid, mnist_x[:2])
    ref = cli_run(onnx, mnist_x[:2], calib=mnist_calib)
    assert labels.dtype == np.int32 and labels.shape == (2, 3)
    assert np.array_equal(labels[:, 0], ref.argmax(1))
    with pytest.raises(hetee.HeteeError):
        stranger.infer(mid, mnist_x[:1])
    s = owner.status(mid)
    assert s["model_id"] == mid and s["locked"] is False and s["query_budget"] == 5
    assert s["allow"] == [allowed.public_key]
    assert [c["client"] for c in s["spent"]] == [allowed.public_key]
    assert s["spent"][0]["queries"] >= 1
    assert owner.allow(mid)["allow"] == "open"
    assert owner.unlock(mid)["locked"] is False
    # Only the owner's key may read the state.
    other = hetee.ModelOwner(server.addr, server.measurement, tmp_path / "o.key", allow_sim=True)
    with pytest.raises(hetee.HeteeError, match="belongs to key"):
        other.status(mid)
