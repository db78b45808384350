"""ModelOwner and Client with a list of servers (replicas of one deployment):
an address that does not answer is skipped, and the results stay bit-identical
to `hetee run --plaintext`."""

import socket

import numpy as np
import pytest

import hetee
from conftest import bits


def _dead_addr() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:%d" % s.getsockname()[1]


def test_a_list_of_servers_skips_one_that_does_not_answer(server, tmp_path, mnist_x, cli_run):
    dead = _dead_addr()
    owner = hetee.ModelOwner(
        [dead, server.addr], server.measurement, tmp_path / "owner.key", allow_sim=True
    )
    model_id = owner.upload("e2dm", max_batch=2)
    assert owner.status(model_id)["model_id"] == model_id
    client = hetee.Client(f"{dead},{server.addr}", server.measurement, allow_sim=True)
    assert repr(client).startswith(f'Client(server="{dead},{server.addr}"')
    y = client.infer(model_id, mnist_x, parallel=2)
    ref = cli_run("e2dm", mnist_x)
    assert np.array_equal(bits(y), bits(ref.reshape(y.shape)))


def test_a_server_list_must_hold_addresses(server):
    with pytest.raises(TypeError, match="server"):
        hetee.Client(42, server.measurement, allow_sim=True)
    with pytest.raises(TypeError, match="server"):
        hetee.Client([server.addr, 7], server.measurement, allow_sim=True)
    with pytest.raises(hetee.HeteeError, match="no server address"):
        hetee.Client([], server.measurement, allow_sim=True)
    with pytest.raises(hetee.HeteeError, match="not host:port"):
        hetee.Client([server.addr, "nohost"], server.measurement, allow_sim=True)
