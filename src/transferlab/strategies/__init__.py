"""Transfer strategies, one small module each; ``conf/strategy/<name>.yaml`` names its class."""
from transferlab.strategies.base import Strategy
from transferlab.strategies.finetune import Finetune
from transferlab.strategies.gradual import Gradual
from transferlab.strategies.linear_probe import LinearProbe
from transferlab.strategies.lp_ft import LPFT
from transferlab.strategies.partial import Partial

__all__ = ["Strategy", "Finetune", "LinearProbe", "Partial", "Gradual", "LPFT"]


def create_strategy(cfg) -> Strategy:
    """Instantiate ``conf/strategy/<name>.yaml``; a wrong setting is a ConfigError naming it."""
    import inspect

    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate

    from transferlab.errors import ConfigError, TransferlabError

    try:
        return instantiate(cfg)
    except InstantiationException as e:
        if isinstance(e.__cause__, TransferlabError):
            raise e.__cause__ from None
        cls = get_class(cfg._target_)
        valid = [p for c in cls.__mro__ if c is not object for p in inspect.signature(c.__init__).parameters
                 if p not in ("self", "kwargs")]
        raise ConfigError(f"strategy config is not valid for {cls.__name__} ({e.__cause__ or e}); "
                          f"its settings are: {', '.join(dict.fromkeys(valid))}") from None
