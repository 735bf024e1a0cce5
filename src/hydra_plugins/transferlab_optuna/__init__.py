"""transferlab's Optuna sweeper for Hydra (``override /hydra/sweeper: optuna``), on Optuna >= 4.

Hydra finds it because ``hydra_plugins`` is a namespace package: every module here is imported when
Hydra starts, so none of them imports Optuna at the top (``tl-train --help`` stays fast).
"""
