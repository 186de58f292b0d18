"""Where studies live: storage URLs and files, and creating or loading a study.

``--storage`` takes any SQLAlchemy URL (``sqlite:///x.db``, ``postgresql://...``) or a file path:
``.db``/``.sqlite``/``.sqlite3`` files are SQLite databases, anything else an Optuna journal file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from ressearch.errors import UserError

if TYPE_CHECKING:
    from ressearch.space import SearchSpace

#: Accuracy up, parameters down; the names are set per study (val_accuracy or test_accuracy, params).
DIRECTIONS = ["maximize", "minimize"]
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def storage_url(storage: str | Path | None, *, out: Path | str = "results",
                name: str = "study") -> str:
    """The URL (or journal path) a study lives at; the default is ``sqlite:///OUT/NAME.db``."""
    if storage is None:
        return f"sqlite:///{Path(out) / f'{name}.db'}"
    text = str(storage)
    if "://" in text:
        return text
    if Path(text).suffix in SQLITE_SUFFIXES:
        return f"sqlite:///{text}"
    return text


def open_storage(storage: str | Path | None, *, out: Path | str = "results",
                 name: str = "study", must_exist: bool = False) -> BaseStorage:
    """An Optuna storage object (``OptunaSearch`` and friends need objects, not URLs).

    Raises:
        UserError: The file does not exist although it must, or the URL cannot be opened.
    """
    url = storage_url(storage, out=out, name=name)
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if "://" not in url:
        path = Path(url)
    if path is not None:
        if must_exist and not path.is_file():
            raise UserError(f"{path}: no such study file")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if "://" in url:
            return RDBStorage(url)
        return JournalStorage(JournalFileBackend(url))
    except Exception as err:  # SQLAlchemy raises many kinds for a bad URL
        raise UserError(f"{url}: cannot open storage ({' '.join(str(err).split())[:200]})") from None


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The sampler the space names, seeded."""
    seed = space.seed
    if space.sampler == "tpe":
        # multivariate: block count and width interact (their product sets the size).
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed,
                                             population_size=max(8, min(50, space.trials // 5)))
    if space.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    return optuna.samplers.RandomSampler(seed=seed)


def create_study(storage: BaseStorage, name: str, space: SearchSpace) -> optuna.Study:
    """Create the study, or load it to continue; names its objectives."""
    study = optuna.create_study(storage=storage, study_name=name, directions=DIRECTIONS,
                                sampler=make_sampler(space), load_if_exists=True)
    if [d.name.lower() for d in study.directions] != DIRECTIONS:
        raise UserError(f"study {name!r} exists with directions "
                        f"{[d.name.lower() for d in study.directions]}, not {DIRECTIONS}")
    with warnings.catch_warnings():  # "experimental" since optuna 3.2, and what the dashboard reads
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([space.objective, "params"])
    study.set_user_attr("objective", space.objective)
    study.set_user_attr("space", space.source)
    return study


def load_study(study: str, name: str | None = None) -> optuna.Study:
    """Open an existing study by file (``results/small.db``, a journal file) or URL.

    Raises:
        UserError: No such file, or the storage holds no (or several) studies and no ``name``.
    """
    storage = open_storage(study, must_exist="://" not in study)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name is None:
        if len(names) != 1:
            raise UserError(f"{study}: holds studies {names}; choose one with --name")
        name = names[0]
    elif name not in names:
        raise UserError(f"{study}: no study named {name!r} (it holds {names})")
    return optuna.load_study(study_name=name, storage=storage)
