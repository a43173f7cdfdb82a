"""sgmn: livestreaming product retrieval (SGMN, Hu et al., ACM MM 2024) as a toolkit.

Public entry points::

    import sgmn
    model = sgmn.create_model("sgmn-tiny")        # a registered variant, with optional overrides
    model = sgmn.load_model("runs/demo")          # a run folder, a saved model, or a published .bin
"""

__version__ = "0.1.0"


def create_model(name: str, **overrides):
    from sgmn.model.registry import create_model as _create

    return _create(name, **overrides)


def load_model(path, **kwargs):
    from sgmn.model.registry import load_model as _load

    return _load(path, **kwargs)


__all__ = ["create_model", "load_model", "__version__"]
