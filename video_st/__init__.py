"""video_st: Sparse-Tuning and parameter-efficient fine-tuning of Vision Transformers for video recognition.

Public API::

    import video_st
    model = video_st.create_model("vit_base_patch16", method="sparse_tuning", num_classes=400,
                                  pretrained="vit_b16_in21k.npz")
    model, spec = video_st.load_model("runs/st/model_final.pt")   # exactly what was trained, and its spec
    preds = video_st.Predictor("runs/st").predict(["a.mp4", "videos/"])  # top-k classes by the test protocol
"""

from . import compat as _compat

_compat.apply()  # before anything imports torchvision (timm, transformers): see compat.py

from .engine.loading import load_model  # noqa: E402
from .engine.predict import Predictor  # noqa: E402
from .errors import CheckpointError, VideoSTError  # noqa: E402
from .models.adapters import load_trainable_state_dict, trainable_state_dict  # noqa: E402
from .models.factory import convert_checkpoint, create_model, list_models  # noqa: E402
from .models.methods import list_methods, mark_trainable  # noqa: E402
from .models.sparsify import KeepRateWarmup  # noqa: E402
from .models.spec import ModelSpec  # noqa: E402
from .models.vit import VideoViT  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "KeepRateWarmup",
    "ModelSpec",
    "Predictor",
    "VideoSTError",
    "VideoViT",
    "convert_checkpoint",
    "create_model",
    "list_methods",
    "list_models",
    "load_model",
    "load_trainable_state_dict",
    "mark_trainable",
    "trainable_state_dict",
]
