"""robustkernels: fused noise-robust classification losses with the logit bias.

Quick start::

    import robustkernels as rk
    loss = rk.robust_loss(logits, target, "mae", epsilon="auto")   # eps from K (Eq. 4)
    criterion = rk.GCELoss(q=0.48, epsilon="auto")
    spec = rk.combine({"nce": 1.0, "agce": 0.1}, agce={"a": 6.0})   # any weighted sum of primitives

Losses, parameters and defaults: :data:`LOSSES`; the primitives they are sums of:
:data:`PRIMITIVES`. Backends: ``"torch"`` (pure PyTorch,
:mod:`robustkernels.reference`), ``"triton"`` and ``"native"`` (compiled C++/CUDA), chosen by
``backend="auto"``.
"""

from . import functional, reference
from ._labels import check_labels, get_label_validation, set_label_validation
from .api import robust_loss
from .backends import available_backends
from .calibration import mean_error, transfer
from .epsilon import epsilon_for_classes
from .modules import *  # noqa: F403  (RobustLoss and one class per loss)
from .modules import __all__ as _module_names
from .schedules import EpsilonScheduler
from .specs import LOSSES, PRIMITIVES, LossSpec, Param, combine, get_spec

__version__ = "0.1.0"

from . import backends as _backends  # noqa: E402

_backends.load_all()

__all__ = [
    "EpsilonScheduler",
    "LOSSES",
    "LossSpec",
    "Param",
    "PRIMITIVES",
    "available_backends",
    "combine",
    "check_labels",
    "epsilon_for_classes",
    "functional",
    "get_label_validation",
    "get_spec",
    "mean_error",
    "reference",
    "robust_loss",
    "set_label_validation",
    "transfer",
    *_module_names,
]
