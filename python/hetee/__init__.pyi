"""Type stubs of the hetee package (the Rust extension hetee._hetee)."""

import os
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, final, overload

import numpy as np
import numpy.typing as npt

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

__version__: str
DEFAULT_MEMORY_BUDGET_MIB: int

_Path = Union[str, "os.PathLike[str]"]
_Model = Union[str, "os.PathLike[str]", bytes, bytearray]
_F32 = npt.NDArray[np.float32]

class HeteeError(Exception):
    """Any failure of a hetee operation; the message is the one the CLI prints."""

class AttestationError(HeteeError):
    """The client refused the server's enclave (another measurement, the
    simulated platform without ``allow_sim=True``, evidence that does not verify)."""

class InputError(HeteeError, ValueError):
    """An array the model cannot take (wrong dtype or shape, NaN or Inf, no
    samples), refused before anything is sent."""

@final
class ModelOwner:
    """A model provider: verifies the server's enclave, then uploads,
    registers and manages its models over a channel opened with its
    long-term key (``key_file``, created on first use; keep it)."""

    def __new__(
        cls,
        server: Union[str, Sequence[str]],
        measurement: str,
        key_file: _Path,
        allow_sim: bool = False,
        ca: Optional[_Path] = None,
    ) -> "ModelOwner": ...
    @property
    def public_key(self) -> str:
        """The owner's public key (64 hex digits)."""
    def upload(
        self,
        model: _Model,
        calib: Optional[_F32] = None,
        policy: str = "logits",
        budget: Optional[int] = None,
        allow_clients: Union[None, Sequence[str], _Path] = None,
        max_batch: int = 8,
        lock_after: int = 1,
        preprocess: Optional[str] = None,
    ) -> str:
        """Quantize ``model`` on ``calib``, encrypt and upload its weights,
        register it; returns the model id (hex)."""
    def status(self, model_id: str) -> Dict[str, Any]:
        """The model's state (as ``hetee model status --json``)."""
    def unlock(self, model_id: str) -> Dict[str, Any]:
        """Clear the model's lock and incident log; returns its state."""
    def allow(
        self, model_id: str, clients: Union[None, Sequence[str], _Path] = None
    ) -> Dict[str, Any]:
        """Replace the allow list (``None``: anyone); returns the state."""

@final
class Client:
    """A data provider: verifies the server's enclave and queries served models.

    It keeps its session with each model open between `infer` calls (no new
    handshake per call); the server closes a session idle for 5 minutes, and
    the client then opens a new one."""

    def __new__(
        cls,
        server: Union[str, Sequence[str]],
        measurement: str,
        key_file: Optional[_Path] = None,
        allow_sim: bool = False,
        ca: Optional[_Path] = None,
    ) -> "Client": ...
    @property
    def public_key(self) -> Optional[str]:
        """The client's public key (64 hex digits), or None without a key file."""
    @overload
    def infer(
        self,
        model_id: str,
        x: Union[_F32, _Path],
        thin: bool = False,
        receipts: Literal[False] = False,
        parallel: int = 4,
        preprocess: Optional[str] = None,
    ) -> npt.NDArray[Any]: ...
    @overload
    def infer(
        self,
        model_id: str,
        x: Union[_F32, _Path],
        thin: bool = False,
        *,
        receipts: Literal[True],
        parallel: int = 4,
        preprocess: Optional[str] = None,
    ) -> Tuple[npt.NDArray[Any], List[Dict[str, Any]]]: ...
    def verify_receipts(self, receipts: Union[List[Dict[str, Any]], _Path]) -> int:
        """Check enclave-signed receipts; returns how many were checked."""

def run(
    model: _Model,
    x: _F32,
    calib: Optional[_F32] = None,
    plaintext: bool = False,
) -> _F32:
    """Run ``model`` on ``x`` with every party in this process (``hetee run``);
    ``plaintext=True`` runs the integer reference (identical output)."""

def measure(
    binary: Optional[_Path] = None, memory_budget_mib: Optional[int] = None
) -> str:
    """The measurement (hex) of the enclave binary, as ``hetee enclave measure``
    (``memory_budget_mib``: default ``DEFAULT_MEMORY_BUDGET_MIB``)."""

def find_enclave_binary(binary: Optional[_Path] = None) -> str:
    """The enclave binary ``measure`` would read."""

def bundled_models() -> List[str]:
    """The names of the bundled models."""
