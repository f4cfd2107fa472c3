"""Guarded SVD and QR: the one place where tngraph's factorisations fall back and fail loudly.

The TT library (:mod:`tngraph.decompose`), the DMRG sweeps and the Riemannian steps split and
orthogonalise many small matrices. A LAPACK or cuSOLVER call can fail to converge, or return
non-finite values, on an ill-conditioned or exactly degenerate matrix. :func:`svd` and
:func:`qr` try the fast call first and then, in order, safer ones; every failure of the last
resort is a :class:`DecompositionError` naming the matrix, never a silent NaN:

1. the call on the matrix's own device and dtype (a wide matrix goes through its transpose,
   2-5x faster on the CPU);
2. on CUDA, the ``gesvd`` driver (slower, more robust);
3. float64 on the CPU (complex128 for a complex matrix; with a ``RuntimeWarning``), the result
   cast back;
4. with ``jitter=True``: float64 (complex128) on the CPU plus a tiny fixed-seed perturbation
   (``1e-12 |matrix|``) that splits exactly degenerate spectra.

Complex matrices are factorised as complex (``u @ diag(s) @ vh``, ``vh`` the conjugate
transpose of ``v``, as ``torch.linalg.svd`` returns it); singular values are real, of the
matrix's real dtype.

:func:`thin_svd` and :func:`plain_qr` are the unguarded calls, for sweeps that check their
result once at the end (:func:`with_fallback`).

Examples
--------
>>> import torch
>>> u, s, vh = svd(torch.ones(4, 3, dtype=torch.float64))    # rank 1: two zero values
>>> [round(float(x), 6) for x in s]
[3.464102, 0.0, 0.0]
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch

from tngraph.errors import TNGraphError

__all__ = ["GUARDED", "PLAIN", "DecompositionError", "Kernels", "all_finite", "one_cpu_thread",
           "plain_qr", "qr", "svd", "thin_svd", "with_fallback"]

Factors = tuple[torch.Tensor, ...]


class DecompositionError(TNGraphError):
    """A decomposition was asked for something impossible (bad ranks, shapes, non-finite data),
    or a factorisation failed beyond every fallback.

    A user error: the CLI maps it to exit code 2. The message says what was found, what was
    expected, and, after ``hint:``, how to fix it.
    """

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))


def all_finite(tensors: Sequence[torch.Tensor | None]) -> bool:
    """Whether every entry of every tensor (``None`` skipped) is finite, in one reduction."""
    values = [t.reshape(-1) for t in tensors if t is not None]
    return bool(torch.isfinite(torch.cat(values)).all()) if values else True


def thin_svd(matrix: torch.Tensor, driver: str | None = None,
             transpose: bool | None = None) -> Factors:
    """Thin SVD ``u, s, vh`` without checks; a wide matrix is decomposed through its transpose
    (unless ``transpose`` says otherwise)."""
    kwargs = {"driver": driver} if driver else {}
    if transpose is None:
        transpose = matrix.shape[0] < matrix.shape[1]
    if transpose:
        v, s, uh = torch.linalg.svd(matrix.T, full_matrices=False, **kwargs)
        return uh.T, s, v.T
    return torch.linalg.svd(matrix, full_matrices=False, **kwargs)


def plain_qr(matrix: torch.Tensor) -> Factors:
    """Reduced QR ``q, r`` without checks."""
    return torch.linalg.qr(matrix, mode="reduced")


def _wide(matrix: torch.Tensor) -> torch.dtype:
    """float64, or complex128 for a complex matrix: the dtype of the exact fallbacks."""
    return torch.complex128 if matrix.is_complex() else torch.float64


def _jittered_svd(matrix: torch.Tensor) -> Factors:
    cpu = matrix.to("cpu", _wide(matrix))
    generator = torch.Generator().manual_seed(0)
    scale = 1e-12 * max(float(torch.linalg.matrix_norm(cpu)), 1e-300)
    return thin_svd(cpu + scale * torch.randn(cpu.shape, generator=generator,
                                              dtype=cpu.dtype))


def _guarded(name: str, matrix: torch.Tensor, what: str,
             attempts: list[tuple[str, Callable[[], Factors]]], hint: str) -> Factors:
    """The first attempt whose factors are all finite, cast to ``matrix``'s device and dtype."""
    reasons = []
    for k, (how, attempt) in enumerate(attempts):
        if k and how == "float64":
            wide = _wide(matrix)
            retry = (f"in {str(wide).removeprefix('torch.')} on the CPU"
                     if (matrix.device.type, matrix.dtype) != ("cpu", wide)
                     else "through the other orientation")
            warnings.warn(f"{name} of a {tuple(matrix.shape)} {what} ({matrix.dtype}, "
                          f"{matrix.device}) failed: {reasons[-1]}; retrying {retry}",
                          RuntimeWarning, stacklevel=4)
        try:
            factors = attempt()
        except RuntimeError as exc:  # torch.linalg.LinAlgError is a RuntimeError
            reasons.append(f"it raised {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        if all_finite(factors):      # (singular values stay real: the real dtype)
            return tuple(f.to(matrix.device, matrix.dtype if f.is_complex() or
                              not matrix.is_complex() else matrix.dtype.to_real())
                         for f in factors)
        reasons.append("it returned non-finite values")
    raise DecompositionError(f"{name} of a {tuple(matrix.shape)} {what} failed even in float64 "
                             f"on the CPU: {'; '.join(reasons)}", hint)


def svd(matrix: torch.Tensor, *, what: str = "unfolding", jitter: bool = False) -> Factors:
    """Thin SVD ``u, s, vh`` with the fallbacks of the module docstring.

    Parameters
    ----------
    matrix
        A 2-d real or complex tensor.
    what
        What the matrix is, for messages (``unfolding``, ``merged tensor``).
    jitter
        Try a perturbed float64 SVD last (for exactly degenerate spectra).

    Raises
    ------
    DecompositionError
        When every attempt raised or returned non-finite values.

    Examples
    --------
    >>> import torch
    >>> u, s, vh = svd(torch.eye(3)[:, :2])
    >>> s.tolist()
    [1.0, 1.0]
    """
    attempts: list[tuple[str, Callable[[], Factors]]] = [("device", lambda: thin_svd(matrix))]
    if matrix.device.type == "cuda":
        attempts.append(("gesvd", lambda: thin_svd(matrix, driver="gesvd")))

    def exact() -> Factors:
        cpu = matrix.to("cpu", _wide(matrix))
        # already float64 on the CPU: the other orientation takes another LAPACK path
        other = None if cpu is not matrix else matrix.shape[0] >= matrix.shape[1]
        return thin_svd(cpu, transpose=other)

    attempts.append(("float64", exact))
    if jitter:
        attempts.append(("float64 jittered", lambda: _jittered_svd(matrix)))
    return _guarded("SVD", matrix, what, attempts, "check the input for huge or tiny values; "
                    "rescale it first")


def qr(matrix: torch.Tensor, *, what: str = "core unfolding") -> Factors:
    """Reduced QR ``q, r`` with the float64 / CPU fallback of :func:`svd`.

    Examples
    --------
    >>> import torch
    >>> q, r = qr(torch.tensor([[3.0], [4.0]]))
    >>> round(abs(float(r)), 6)
    5.0
    """
    return _guarded("QR", matrix, what, [
        ("device", lambda: plain_qr(matrix)),
        ("float64", lambda: plain_qr(matrix.to("cpu", _wide(matrix))))],
        "rescale the cores first")


class Kernels(NamedTuple):
    """The two factorisations a sweep calls: guarded (:data:`GUARDED`) or plain (:data:`PLAIN`)."""

    qr: Callable[[torch.Tensor], Factors]
    svd: Callable[[torch.Tensor], Factors]


#: every call checked, with fallbacks (the default of the TT library's sweeps)
GUARDED = Kernels(qr, svd)
#: the bare torch calls, for a sweep that checks its result once (:func:`with_fallback`)
PLAIN = Kernels(plain_qr, thin_svd)


def with_fallback(sweep: Callable[..., list[Any]], *args: Any) -> list[Any]:
    """Run a sweep of many small factorisations with the plain calls, checking once at the end;
    if that fails (an error or a non-finite result), run it again with the guarded ones.

    ``sweep(*args, kernels=...)`` takes the factorisations as its ``kernels`` keyword.

    Examples
    --------
    >>> import torch
    >>> def spectra(cores, *, kernels):
    ...     return [kernels.svd(c)[1] for c in cores]
    >>> with_fallback(spectra, [torch.eye(2)])
    [tensor([1., 1.])]
    """
    try:
        out = sweep(*args, kernels=PLAIN)
        if all_finite(out):
            return out
    except RuntimeError:   # torch.linalg.LinAlgError is one
        pass
    return sweep(*args, kernels=GUARDED)


@contextlib.contextmanager
def one_cpu_thread(device: Any) -> Iterator[None]:
    """Run the block on one CPU thread (the count is restored afterwards); no change on other
    devices or when torch already uses one thread.

    For steppers whose step is many tiny linear-algebra calls (per-core QRs, SVDs, small
    matrix products), where handing work to a second OpenMP thread costs more than it saves.

    Examples
    --------
    >>> import torch
    >>> with one_cpu_thread(torch.device("cpu")):
    ...     torch.get_num_threads()
    1
    """
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
