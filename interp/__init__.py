"""interp: a mechanistic-interpretability toolkit.

    import interp
    model = interp.load_model("smollm2-135m")
    task = interp.tasks.ioi(model, n_prompts=8)
"""

from interp.components import Component, ComponentError, Site, enumerate_components
from interp.config import ModelConfig
from interp.loading import ModelLoadError, load_model
from interp import metrics, tasks  # noqa: F401  (interp.tasks.ioi, interp.metrics.logit_diff)
from interp.model import ActivationCache, Model, TokenizationError

__all__ = [
    "ActivationCache", "Component", "ComponentError", "Model", "ModelConfig", "ModelLoadError",
    "Site", "TokenizationError", "enumerate_components", "load_model",
]
__version__ = "0.1.0"
