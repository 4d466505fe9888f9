"""Fused Triton kernels for every loss of :data:`robustkernels.LOSSES` (the ``"triton"`` backend).

One kernel launch computes the biased softmax, every row reduction the loss needs, the per-row
loss and -- when the logits require grad -- the analytic gradient; the backward only rescales that
buffer when ``grad_output`` is not the value already folded in. See :mod:`.kernels` for the memory
traffic argument, :mod:`.launch` for the launch heuristic, :mod:`.op` for the ``torch.library``
ops and :mod:`.backend` for the backend contract.

Importing this package does not import Triton; :mod:`.backend` does, when asked. The kernels are
created in interpreter mode when ``TRITON_INTERPRET=1`` is set *before* they are first imported
(that is what runs them on CPU tensors, for testing).
"""
