"""The instruction languages: every task carries one instruction in each of ``LANGS``.

Defined once here (the lowest layer that reads instructions) and imported by the
reader, the envs, training, evaluation and the demo. ``TRAIN_LANGS`` adds
``mix``: the reader draws en or ja per sample (a seeded bit per index).
"""

from __future__ import annotations

from typing import Literal, get_args

Lang = Literal["en", "ja"]
TrainLang = Literal[Lang, "mix"]
LANGS: tuple[str, ...] = get_args(Lang)
TRAIN_LANGS: tuple[str, ...] = get_args(TrainLang)
