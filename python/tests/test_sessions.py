"""A Client keeps its session with a model open between `infer` calls: the
next call skips the handshake, the results stay bit-identical to
`hetee run --plaintext`, and the session is closed when the Client goes."""

import gc
import json
import urllib.request

import numpy as np

import hetee
from conftest import bits, start_server


def _open_sessions(addr: str) -> int:
    with urllib.request.urlopen(f"http://{addr}/v1/health", timeout=30) as r:
        return json.load(r)["sessions"]


def test_consecutive_infer_calls_share_one_session(
    hetee_bin, enclave_bin, tmp_path, mnist_x, cli_run
):
    with start_server(hetee_bin, tmp_path / "store") as server:
        owner = hetee.ModelOwner(
            server.addr, server.measurement, tmp_path / "owner.key", allow_sim=True
        )
        model_id = owner.upload("e2dm")
        client = hetee.Client(server.addr, server.measurement, allow_sim=True)
        x = mnist_x[:4]
        ys = [client.infer(model_id, x[i : i + 2], parallel=1) for i in (0, 2)]
        # One session carried all four queries of both calls, and is open
        # for the next one.
        assert _open_sessions(server.addr) == 1
        ys.append(client.infer(model_id, x[:1], thin=True, parallel=1))
        assert _open_sessions(server.addr) == 1
        ref = cli_run("e2dm", x)
        y = np.concatenate(ys[:2])
        assert np.array_equal(bits(y), bits(ref.reshape(y.shape)))
        assert np.array_equal(bits(ys[2]), bits(ref[:1].reshape(ys[2].shape)))
        del client
        gc.collect()
        assert _open_sessions(server.addr) == 0
