"""Client.infer on image paths (PNG files written here from real MNIST test
images) with the preprocessing declared at upload or given in the call, and
the exceptions of a failed channel handshake."""

import base64
import http.server
import json
import struct
import threading
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest

import hetee
from conftest import bits


def write_png(path, pixels: np.ndarray) -> None:
    """An 8-bit grayscale PNG of a 2-D uint8 array (no dependency)."""
    h, w = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(png + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory, mnist_x):
    """The 4 MNIST images as b.png, d.png, a.png, c.png: sorted, they are
    images 2, 0, 3, 1."""
    d = tmp_path_factory.mktemp("pngs")
    for name, img in zip("bdac", mnist_x):
        write_png(d / f"{name}.png", np.rint(img[0] * 255).astype(np.uint8))
    return d, [2, 0, 3, 1]


@pytest.fixture(scope="module")
def declared_id(server, tmp_path_factory):
    owner = hetee.ModelOwner(
        server.addr, server.measurement, tmp_path_factory.mktemp("o") / "k", allow_sim=True
    )
    return owner.upload("mnist", max_batch=4, preprocess="scale=1/255,mean=0.5,std=0.5")


def test_infer_on_a_png_folder_uses_the_declared_spec(server, declared_id, png_dir, mnist_x):
    d, order = png_dir
    client = hetee.Client(server.addr, server.measurement, allow_sim=True)
    y = client.infer(declared_id, d)
    ref = client.infer(declared_id, ((mnist_x[order] - np.float32(0.5)) / np.float32(0.5)))
    assert y.shape == (4, 10)
    assert np.array_equal(bits(y), bits(ref))
    # The call's spec overrides the declared one; a single file works too.
    y2 = client.infer(declared_id, str(d / "a.png"), preprocess="scale=1/255")
    assert np.array_equal(bits(y2), bits(client.infer(declared_id, mnist_x[2:3])))


def test_bad_images_and_specs_raise_input_error(server, declared_id, png_dir, tmp_path):
    client = hetee.Client(server.addr, server.measurement, allow_sim=True)
    with pytest.raises(hetee.InputError, match="takes 28x28"):
        client.infer(declared_id, png_dir[0], preprocess="size=14x14")
    with pytest.raises(hetee.InputError, match="preprocessing spec"):
        client.infer(declared_id, png_dir[0], preprocess="colour=red")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(hetee.InputError, match="bad.png is not a readable PNG"):
        client.infer(declared_id, tmp_path)


class _Msg2Corrupter(http.server.BaseHTTPRequestHandler):
    """Relays to the real server but flips a bit of every Noise message 2:
    a host whose answers do not come from the enclave it attested."""

    upstream = ""

    def log_message(self, *args):
        pass

    def _relay(self, method):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        req = urllib.request.Request(
            self.upstream + self.path, data=body if method == "POST" else None, method=method
        )
        if self.headers.get("Content-Type"):
            req.add_header("Content-Type", self.headers["Content-Type"])
        try:
            with urllib.request.urlopen(req) as r:
                status, out = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, out = e.code, e.read()
        if method == "POST" and self.path == "/v1/sessions" and status == 200:
            doc = json.loads(out)
            msg2 = bytearray(base64.b64decode(doc["msg2"]))
            msg2[-1] ^= 1
            doc["msg2"] = base64.b64encode(bytes(msg2)).decode()
            out = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        self._relay("GET")

    def do_POST(self):
        self._relay("POST")

    def do_DELETE(self):
        self._relay("DELETE")


def test_a_failed_channel_handshake_raises_attestation_error(
    server, declared_id, mnist_x, tmp_path
):
    handler = type("H", (_Msg2Corrupter,), {"upstream": f"http://{server.addr}"})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        addr = f"127.0.0.1:{proxy.server_address[1]}"
        client = hetee.Client(addr, server.measurement, allow_sim=True)
        with pytest.raises(hetee.AttestationError, match="channel handshake failed"):
            client.infer(declared_id, mnist_x[:1])
        # Thin mode and a long-term key take the same path.
        keyed = hetee.Client(addr, server.measurement, tmp_path / "k", allow_sim=True)
        with pytest.raises(hetee.AttestationError, match="channel handshake failed"):
            keyed.infer(declared_id, mnist_x[:1], thin=True)
    finally:
        proxy.shutdown()
