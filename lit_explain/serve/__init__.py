"""HTTP service: predict and explain images over the same :class:`~lit_explain.inference.Explainer`.

Example:
    >>> from lit_explain.inference import Explainer
    >>> from lit_explain.serve import ServeSettings, create_app
    >>> app = create_app(Explainer.from_checkpoint("last.ckpt", guided=False), ServeSettings(log_below=0.5))  # doctest: +SKIP
"""

from lit_explain.serve.app import ApiError, ServeSettings, create_app, decode_base64_image, warm_up
from lit_explain.serve.batching import BatchStats, MicroBatcher

__all__ = [
    "ApiError",
    "BatchStats",
    "MicroBatcher",
    "ServeSettings",
    "create_app",
    "decode_base64_image",
    "warm_up",
]
