"""HTTP service: predict and explain images over the same :class:`~lit_explain.inference.Explainer`.

Example:
    >>> from lit_explain.inference import Explainer
    >>> from lit_explain.serve import ServeSettings, create_app
    >>> app = create_app(Explainer.from_checkpoint("last.ckpt", guided=False), ServeSettings(log_below=0.5))  # doctest: +SKIP
"""

from lit_explain.serve.app import create_app, warm_up
from lit_explain.serve.batching import BatchStats, MicroBatcher
from lit_explain.serve.bodies import decode_base64_image
from lit_explain.serve.decoding import PixelBudget
from lit_explain.serve.errors import ApiError
from lit_explain.serve.service import ServeSettings

__all__ = [
    "ApiError",
    "BatchStats",
    "MicroBatcher",
    "PixelBudget",
    "ServeSettings",
    "create_app",
    "decode_base64_image",
    "warm_up",
]
