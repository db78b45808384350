"""hetee: confidential neural-network inference (leveled BFV on an untrusted
server, exact nonlinear steps in an attested enclave), from Python.

The package wraps the same Rust library the ``hetee`` CLI uses:

- :class:`ModelOwner` -- the model provider: ``upload`` (``hetee model upload``),
  ``status``, ``unlock``, ``allow``;
- :class:`Client` -- the data provider: ``infer`` (``hetee infer``) and
  ``verify_receipts`` (``hetee verify-receipt``);
- :func:`run` -- every party in this process (``hetee run``), or the plaintext
  integer reference with ``plaintext=True``;
- :func:`measure` -- the enclave measurement to pin (``hetee enclave measure``);
  :func:`find_enclave_binary` says which binary it measures.

Arrays are numpy ``float32``; the heavy work runs in Rust with the GIL
released. Failures raise :class:`HeteeError` (message as the CLI prints it);
a refused enclave raises :class:`AttestationError`, an unusable array
:class:`InputError` (also a ``ValueError``).
"""

from ._hetee import (
    DEFAULT_MEMORY_BUDGET_MIB,
    AttestationError,
    Client,
    HeteeError,
    InputError,
    ModelOwner,
    __version__,
    bundled_models,
    find_enclave_binary,
    measure,
    run,
)

__all__ = [
    "AttestationError",
    "Client",
    "DEFAULT_MEMORY_BUDGET_MIB",
    "HeteeError",
    "InputError",
    "ModelOwner",
    "__version__",
    "bundled_models",
    "find_enclave_binary",
    "measure",
    "run",
]
