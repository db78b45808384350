"""The clients' TLS options (`ca=`) against `hetee serve --tls-cert/--tls-key`,
with a CA and a server certificate made here with the openssl command."""

import shutil
import subprocess

import numpy as np
import pytest

import hetee
from conftest import bits, start_server


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(d, tag):
    """A CA (`{tag}-ca.pem`, its key) and, for the first, a leaf for 127.0.0.1."""
    ca, key = d / f"{tag}-ca.pem", d / f"{tag}-ca.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", ca, "-days", "2", "-subj", f"/CN=hetee test CA {tag}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )
    return ca, key


@pytest.fixture(scope="module")
def tls_server(hetee_bin, enclave_bin, tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca(d, "right")
    wrong_ca, _ = _ca(d, "wrong")
    leaf_key, csr, leaf = d / "leaf.key", d / "leaf.csr", d / "leaf.pem"
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", leaf_key, "-out", csr, "-subj", "/CN=127.0.0.1",
    )
    ext = d / "leaf.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", leaf, "-days", "2", "-extfile", ext,
    )
    store = tmp_path_factory.mktemp("tls-store")
    with start_server(hetee_bin, store, "--tls-cert", leaf, "--tls-key", leaf_key) as s:
        assert s.addr.startswith("https://127.0.0.1:")
        yield s, ca, wrong_ca


def test_https_with_the_right_ca(tls_server, tmp_path, mnist_x):
    s, ca, _ = tls_server
    owner = hetee.ModelOwner(s.addr, s.measurement, tmp_path / "o.key", allow_sim=True, ca=ca)
    mid = owner.upload("e2dm")
    client = hetee.Client(s.addr, s.measurement, allow_sim=True, ca=ca)
    y = client.infer(mid, mnist_x[:2])
    assert np.array_equal(bits(y), bits(hetee.run("e2dm", mnist_x[:2], plaintext=True)))


def test_a_wrong_ca_and_plain_http_are_refused(tls_server, tmp_path, mnist_x):
    s, _, wrong_ca = tls_server
    owner = hetee.ModelOwner(s.addr, s.measurement, tmp_path / "o.key", allow_sim=True, ca=wrong_ca)
    with pytest.raises(hetee.HeteeError, match="cannot reach the server"):
        owner.upload("e2dm")
    # Without ca=, the system's roots do not know the test CA either.
    client = hetee.Client(s.addr, s.measurement, allow_sim=True)
    with pytest.raises(hetee.HeteeError, match="cannot reach the server"):
        client.infer("00" * 16, mnist_x[:1])
    plain = hetee.Client(s.addr.replace("https://", "http://"), s.measurement, allow_sim=True)
    with pytest.raises(hetee.HeteeError, match="speaks TLS: use an https:// address"):
        plain.infer("00" * 16, mnist_x[:1])
