"""The contract every export format meets."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class Format:
    """One export format: what it can hold (class attributes) and how it writes and checks a folder."""
    modalities: ClassVar[tuple[str, ...]] = ("image", "text")  # the model families' inputs it takes
    one_task: ClassVar[bool] = False  # holds one task's head only (a multi-task model names it: task=...)
    ensembles: ClassVar[bool] = False  # can hold an ensemble as one model
    needs: ClassVar[tuple[str, ...]] = ()  # modules it imports, from the `deploy` extra
    tolerance: ClassVar[float] = 1e-4  # the largest |probability difference| its check accepts
    usage: ClassVar[str] = ""  # how to open the folder ({folder}), for its model card

    def write(self, deployed, task, folder: Path) -> dict:
        """Write ``deployed`` (``deploy.Deployed``; ``task``: the chosen ``tasks.Task`` when ``one_task``,
        else None) into ``folder`` (empty but for the export's record, ``transferlab.json``), load it back the way its users will, and return what the
        check measured: at least ``max_abs_diff``, the largest absolute difference between the loaded
        model's class probabilities and transferlab's on ``deployed.sample()``."""
        raise NotImplementedError
