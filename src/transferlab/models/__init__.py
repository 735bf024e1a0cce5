"""Source models (the ``model`` group): a backbone from a model family (``model.kind``), one head per
task, source weights. ``models/base.py`` holds the contract, one file per family implements it
(``models/timm.py``, ``models/hf.py``); ``create_model`` is the only place a model is assembled and
``from_checkpoint`` the only place one is rebuilt from a checkpoint."""
from transferlab.registry import Registry

FAMILIES = Registry("model", "model family", package="transferlab.models",
                    support=("base", "network", "checkpoint", "wordpiece"))


def create_model(family, tasks, weights=None, input_size=None):
    """Backbone + heads for the family's settings and the run's (complete) tasks, then ``weights`` (the
    family's ``checkpoint`` unless given; "" = none): the only place a model for training is assembled.
    ``input_size``: the pixels of the data's images (None: the model's own size)."""
    from transferlab.models.checkpoint import load_source_weights
    from transferlab.models.network import build_network

    model = build_network(family, tasks, input_size)
    weights = family.checkpoint if weights is None else weights
    if weights:
        load_source_weights(model, weights, tasks)
    return model


def from_checkpoint(path):
    from transferlab.models.checkpoint import from_checkpoint as load

    return load(path)


__all__ = ["FAMILIES", "create_model", "from_checkpoint"]
