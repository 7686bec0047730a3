"""Environment fixes, applied once when ``video_st`` is imported, each only when it is needed.

Every fix lives here and nowhere else, so that when an upstream release mends the problem this file is the one
place to delete from.

1. torchvision on a CPU-only torch. The only torchvision built for torch 2.13 (0.28.0) is a CUDA build; on the CPU
   wheel of torch its compiled extension ``_C.so`` cannot be loaded, and ``import torchvision`` then dies in
   ``_meta_registrations`` with ``operator torchvision::nms does not exist``. Declaring the two operator schemas
   that module registers fake kernels for lets the pure-Python parts (transforms v1/v2, tv_tensors) import; the
   compiled ops (nms, roi_align) and torchvision's own image/video decoding stay unavailable, and we use neither.
   timm and transformers import torchvision, so this has to run before they are imported.
2. pytorchvideo 0.1.5 (its last release) imports ``torchvision.transforms.functional_tensor``, which torchvision
   0.17 renamed to ``_functional_tensor``; aliasing the old name lets ``pytorchvideo.transforms`` import.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import importlib.util
import logging
import sys

import torch

_log = logging.getLogger(__name__)
_applied: list[str] = []
_torchvision_lib = None  # keeps the schema fragment alive for the process lifetime


def _torchvision_extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to fix
    libs = glob.glob(f"{spec.submodule_search_locations[0]}/_C*.so") + glob.glob(
        f"{spec.submodule_search_locations[0]}/_C*.pyd"
    )
    if not libs:
        return True
    try:
        torch.ops.load_library(libs[0])
    except OSError:
        return False
    return True


def _fix_torchvision() -> None:
    global _torchvision_lib
    if "torchvision" in sys.modules or _torchvision_extension_loads():
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in (
        "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    ):
        with contextlib.suppress(RuntimeError):  # already defined by an earlier fragment in this process
            lib.define(schema)
    _torchvision_lib = lib
    _applied.append("torchvision: declared nms/qnms schemas (CUDA-only _C.so cannot load on this CPU torch)")


def _fix_pytorchvideo() -> None:
    old = "torchvision.transforms.functional_tensor"
    if old in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        importlib.import_module(old)
        return
    except ImportError:
        pass
    sys.modules[old] = importlib.import_module("torchvision.transforms._functional_tensor")
    _applied.append("pytorchvideo: aliased torchvision.transforms.functional_tensor")


def disable_deepspeed_shm_comm() -> None:
    """DeepSpeed on a CPU: keep collectives on the gloo process group we created.

    deepspeed.comm's TorchBackend otherwise builds its shared-memory all-reduce op whenever the CPU accelerator is
    active, even with a process group already initialised: about 30 s of g++/ninja on a fresh machine (a
    compiler the CI image may lack), ``/dev/shm/deepspeed_allreduce_buffer_*`` files left behind, and, per its own
    source, kernels that fault without AVX-512 for bf16. Tiny CPU runs gain nothing from it. Called by the
    DeepSpeed backend only when training on the CPU."""
    # importlib, not `import deepspeed.comm.torch as ...`: deepspeed.comm's namespace has an attribute `torch`
    # (the torch package), which that statement would bind instead of the submodule.
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    if getattr(ds_torch.build_shm_op, "__name__", "") != "_no_shm_op":
        def _no_shm_op():
            return None

        ds_torch.build_shm_op = _no_shm_op
        _applied.append("deepspeed: shared-memory all-reduce op disabled on CPU (gloo does the collectives)")


def apply() -> list[str]:
    """Apply every fix that this environment needs; idempotent. Returns what was applied (for logs)."""
    if not _applied:
        _fix_torchvision()
        try:
            _fix_pytorchvideo()
        except Exception as err:  # a torchvision that still cannot import is reported by whoever imports it
            _log.debug("pytorchvideo alias not applied: %s", err)
        if not _applied:
            _applied.append("none needed")
        _log.debug("compat fixes: %s", _applied)
    return list(_applied)
