"""Composing and checking configs: Hydra composes, this module rejects bad values up front.

Hydra already refuses unknown groups, unknown options and typos in keys (the config is in struct
mode). :func:`check` rejects bad *values* before any data is read or file written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from bench.cache import stable_hash
from bench.training import schedule as schedule_mod
from bench.errors import BenchError
from bench.folder import SOURCE_MARK, dataset_label, split_method  # noqa: F401 - re-exported
from bench import models
from bench.training.protocol import Protocol
from bench.training.strategies import Strategy

# Keys that pick *which* cells run or *where* they run; they never change a cell's result, so a
# study may be extended or re-run with other values and still append to the same records.
# ``strategy`` selects cells, but each strategy's definition is part of its cell's identity
# (:func:`cell_hash`), and a study refuses a redefined strategy under an old name. Precision and
# determinism change results, so only the accelerator and device count are grid keys.
# ``source.seeds`` and ``hpo.replicates`` add replicates (more source models, more independent
# tunings), each recorded under its own key, so they extend a study like more seeds do.
GRID_KEYS = ("strategy", "data.sizes", "seeds", "source.seeds", "hpo.replicates", "workers",
             "logger", "transferability",
             "trainer.accelerator", "trainer.devices",
             "trainer.deterministic", "paths", "progress", "plots", "hpo.storage", "hpo.worker_id",
             "hpo.worker_count", "hpo.heartbeat_interval", "hpo.grace_period", "hpo.max_retry")
SAMPLERS = ("tpe", "random", "qmc")


def config_dir() -> Path:
    """$TRANSFER_BENCH_CONF, else ``conf/`` beside the package (editable install or source
    checkout), else ``./conf`` (a wheel installed offline, run from the checkout)."""
    env = os.environ.get("TRANSFER_BENCH_CONF")
    candidates = [Path(env)] if env else [Path(__file__).resolve().parent.parent / "conf",
                                          Path.cwd() / "conf"]
    for path in candidates:
        if (path / "config.yaml").is_file():
            return path
    raise BenchError(f"config folder not found at {candidates[0]}; run from the checkout or "
                     "set TRANSFER_BENCH_CONF")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config for ``overrides`` (Hydra override grammar), without running anything."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def selected_strategies(cfg: DictConfig) -> dict[str, dict]:
    """The strategies chosen with ``strategy=[...]``, name -> composed node. An experiment may
    set a strategy's own values (``strategy.discriminative.lr_decay``) for when it is chosen;
    when ``strategy=[...]`` leaves it out, that node holds no ``transfer`` and is not a choice.
    A node without ``transfer`` and without a file in conf/strategy/ is a typo: say so."""
    nodes = OmegaConf.to_container(cfg.strategy, resolve=True) or {}
    out = {}
    for name, spec in nodes.items():
        spec = dict(spec or {})
        if "transfer" in spec:
            out[name] = spec
        elif not (config_dir() / "strategy" / f"{name}.yaml").is_file():
            raise BenchError(f"strategy.{name} names no strategy (no conf/strategy/{name}.yaml "
                             f"and no transfer: key); the strategies: "
                             f"{', '.join(sorted(p.stem for p in config_dir().glob('strategy/*.yaml')))}")
    return out


def strategies(cfg: DictConfig) -> list[Strategy]:
    """The selected strategies, checked against the model's blocks and kind."""
    blocks = models.blocks(cfg.model)
    selected = selected_strategies(cfg)
    if not selected:
        raise BenchError("no strategy selected; e.g. strategy=[scratch,full]")
    transformer = models.is_transformer(cfg.model)
    for name, spec in selected.items():  # the model kind first: clearer than a block mismatch
        spec = spec or {}
        if spec.get("lora") and not transformer:
            raise BenchError(f"strategy {name!r} adds LoRA adapters, which need a transformer "
                             "backbone (model=minilm); the TextCNN has no attention layers")
        if spec.get("transfer") == "vectors" and transformer:
            raise BenchError(f"strategy {name!r} transfers word vectors, which a transformer "
                             "does not use (it embeds its own subwords); use model=textcnn")
    return [Strategy.from_config(name, spec or {}, blocks) for name, spec in selected.items()]


def sizes(cfg: DictConfig) -> list[int | str]:
    out: list[int | str] = []
    for s in cfg.data.sizes:
        if s == "all":
            out.append("all")
        elif isinstance(s, int) and not isinstance(s, bool) and s > 0:
            out.append(s)
        else:
            raise BenchError(f"data.sizes contains {s!r}; sizes are positive integers or 'all'")
    if not out:
        raise BenchError("data.sizes is empty; e.g. data.sizes=[50,200]")
    return out


def _positive(cfg: DictConfig, key: str, kind: type = float) -> None:
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if not ok or (kind is int and not isinstance(value, int)):
        raise BenchError(f"{key}={value!r}; it must be a positive {kind.__name__}")


PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")


def check_precision(cfg: DictConfig) -> None:
    """bf16 only where the hardware computes it natively (a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 / AMX): elsewhere it is emulated, slower than fp32, and no saving to measure."""
    precision = str(OmegaConf.select(cfg, "trainer.precision", default=None) or "")
    if not precision:
        return
    if precision not in PRECISIONS:  # else Lightning's ValueError, after the study folder exists
        raise BenchError(f"trainer.precision={precision}; use one of {', '.join(PRECISIONS)} "
                         "(or leave it unset: fp32)")
    if "bf16" not in precision:
        return
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    native = torch.cuda.is_bf16_supported() if gpu else bool(
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    if not native:
        raise BenchError(f"trainer.precision={precision} needs bf16 hardware ("
                         f"{'this GPU lacks it' if gpu else 'this CPU has no AVX512-BF16 or AMX'}); "
                         "leave trainer.precision unset (fp32)")


def check(cfg: DictConfig) -> None:
    """Raise :class:`BenchError` for the first bad value; touches no file."""
    check_precision(cfg)
    if OmegaConf.is_missing(cfg, "study"):
        raise BenchError("no study name; pick an experiment (experiment=movie_to_amazon) or set study=NAME")
    for prefix, node in (("data.source", cfg.data.source), ("data.target", cfg.data.target),
                         ("embeddings", cfg.embeddings), ("model", cfg.model)):
        for key in node:
            if OmegaConf.is_missing(node, key):
                raise BenchError(f"{prefix}.{key} is required here (e.g. {prefix}.{key}=...)")
    for key in ("train.lr", "source.lr"):
        _positive(cfg, key)
    for key in ("train.batch_size", "train.min_epochs", "train.max_epochs", "train.patience",
                "train.min_steps", "source.batch_size", "source.min_epochs", "source.max_epochs",
                "source.patience"):
        _positive(cfg, key, int)
    if cfg.train.min_epochs > cfg.train.max_epochs:
        raise BenchError(f"train.min_epochs={cfg.train.min_epochs} exceeds train.max_epochs="
                         f"{cfg.train.max_epochs}")
    models.check(cfg)
    protocol = Protocol.from_config(OmegaConf.to_container(cfg.protocol, resolve=True))
    if protocol.name == "budget" and cfg.hpo.mode == "pareto":
        raise BenchError("hpo.mode=pareto searches sizes on the validation split; run it with "
                         "protocol=fixed_val")
    if cfg.hpo.mode == "pareto" and OmegaConf.select(cfg, "source.seeds", default=None):
        raise BenchError("hpo.mode=pareto searches with one source model; drop source.seeds")
    for key in ("train.weight_decay", "source.weight_decay"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, (int, float)) or value < 0:
            raise BenchError(f"{key}={value!r}; it must be a number >= 0")
    if not cfg.seeds or not all(isinstance(s, int) and s >= 0 for s in cfg.seeds):
        raise BenchError(f"seeds={list(cfg.seeds)!r}; give a list of integers >= 0 (0 is a seed)")
    _distinct_seeds(list(cfg.seeds), "seeds")
    many = OmegaConf.select(cfg, "source.seeds", default=None)
    if many is not None:
        if not OmegaConf.is_list(many) or not many or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in many):
            raise BenchError(f"source.seeds={many!r}; give a list of integers >= 0, e.g. "
                             "source.seeds=[0,1,2], or null for the one model of source.seed")
        _distinct_seeds(list(many), "source.seeds")
    schedule_mod.check(schedule_spec(cfg))
    for key in ("train.lengths", "train.probe_lengths"):
        check_lengths(OmegaConf.select(cfg, key, default=None), key)
    for strategy in selected_strategies(cfg).values():
        for key in ("lengths", "probe_lengths"):
            check_lengths((strategy.get("train") or {}).get(key), f"strategy train.{key}")
    check_device(cfg)
    check_logger(cfg)
    workers = OmegaConf.select(cfg, "workers", default=1)
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int)
                              or workers < 1):
        raise BenchError(f"workers={workers!r}; give a number of worker processes >= 1, or auto")
    sizes(cfg)
    strategies(cfg)
    check_hpo(cfg)
    if OmegaConf.select(cfg, "data.sources", default=None) is not None:
        listed = source_configs(cfg)
        if len(listed) > 1 and models.is_transformer(cfg.model) \
                and not cfg.model.get("intermediate"):
            raise BenchError(f"data.sources lists {len(listed)} sources, but without "
                             "model.intermediate=true the transformer transfers its pretrained "
                             "weights, the same for every source; set model.intermediate=true "
                             "to fine-tune on each source first (STILTs)")
    from bench.analysis.transferability import check_names

    names = OmegaConf.select(cfg, "transferability", default=[]) or []
    if not OmegaConf.is_list(names) and not isinstance(names, list):
        raise BenchError(f"transferability={names!r}; give a list of estimators or []")
    check_names(list(names))


def check_lengths(value: Any, where: str) -> None:
    """Candidate training lengths: optimizer steps, positive and increasing."""
    if value is None:
        return
    values = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else None
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                             for v in values):
        raise BenchError(f"{where}={value!r}; give a list of optimizer steps > 0, e.g. "
                         "[32,64,128,256]")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise BenchError(f"{where}={values}; the candidate lengths must increase")


def check_schedule_length(cfg: DictConfig) -> None:
    """A new study whose LR decays must say which lengths to choose among: a decaying
    schedule laid over a nominal cap that early stopping cuts short never anneals."""
    if schedule_mod.is_constant(schedule_spec(cfg)):
        return
    if OmegaConf.select(cfg, "protocol.name", default="budget") == "fixed_val":
        return
    if OmegaConf.select(cfg, "train.lengths", default=None) is None:
        raise BenchError("train.schedule decays, but train.lengths is not set: give the "
                         "candidate lengths in optimizer steps, e.g. train.lengths=[32,64,128,256]")


def check_device(cfg: DictConfig) -> None:
    """A GPU asked for but not there (no device, a CPU-only torch build, too few devices) is a
    one-line error before anything is written, not a Lightning traceback mid-study."""
    accelerator = cfg.trainer.accelerator
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not have:
        build = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
                 else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU")
        raise BenchError(f"trainer.accelerator={accelerator} but {build}; use trainer=cpu or "
                         "trainer=auto")
    devices = cfg.trainer.devices
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > have:
        raise BenchError(f"trainer.devices={devices} but only {have} GPU(s) are visible")


LOGGERS = ("none", "csv", "tensorboard", "mlflow")


def check_logger(cfg: DictConfig) -> None:
    name = OmegaConf.select(cfg, "logger.name", default="none")
    if name not in LOGGERS:
        raise BenchError(f"logger.name={name!r}; use one of {', '.join(LOGGERS)}")
    if name == "tensorboard":
        import importlib.util

        if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            raise BenchError("logger=tensorboard needs the tensorboard package (pip install "
                             "tensorboard); or use logger=csv")
    if name == "mlflow":
        import importlib.util

        check_reachable(OmegaConf.select(cfg, "logger.tracking_uri", default=None),
                        "logger.tracking_uri")
        try:
            found = importlib.util.find_spec("mlflow") is not None
        except (ImportError, ValueError):  # an import hook refusing it, a stub module
            found = False
        if not found:
            raise BenchError("logger=mlflow needs MLflow (pip install 'transfer-bench[mlflow]'); "
                             "or use logger=csv")


def check_reachable(uri: Any, where: str, timeout: float = 3.0) -> None:
    """A server a config names (``http://host:port``) answers a TCP connection now, before any
    fit: an unreachable tracker is one line, not minutes of retries after training started."""
    if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
        return
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    _connect(parts.hostname or "localhost", parts.port or (443 if parts.scheme == "https" else 80),
             f"{where}={uri!r}", "start the server or choose another logger (logger=csv)",
             timeout)


def _connect(host: str, port: int, what: str, advice: str, timeout: float = 3.0) -> None:
    """A TCP connection to a service a config names, or one line saying it cannot be had."""
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise BenchError(f"{what} cannot be reached ({exc.strerror or exc}); {advice}") from None


def check_storage(url: Any) -> None:
    """An RDB storage on a server (``hpo.storage=postgresql://...``) answers before the study
    prepares data or claims its folder."""
    if not isinstance(url, str) or url.startswith("sqlite") or "://" not in url:
        return
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy's ArgumentError and friends
        raise BenchError(f"hpo.storage={url!r} is not a database URL "
                         "(e.g. postgresql://user@host:5432/db)") from None
    ports = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
    port = parsed.port or ports.get(parsed.get_backend_name())
    if parsed.host and port:
        from bench.redact import redact_text

        _connect(parsed.host, port, f"hpo.storage={redact_text(url)!r}",
                 "start the database server or drop hpo.storage (the study's own SQLite file)")


def _distinct_seeds(seeds: list[int], key: str) -> None:
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise BenchError(f"{key} repeats {repeated}; a repeated seed would be one replicate "
                         "counted twice")


def source_configs(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The study's sources by display name: ``data.source``, or each of ``data.sources`` (a
    dataset name from ``conf/dataset/`` or a whole dataset config), checked up front."""
    listed = OmegaConf.select(cfg, "data.sources", default=None)
    target = OmegaConf.to_container(cfg.data.target, resolve=True)
    if listed is None:
        entries = [OmegaConf.to_container(cfg.data.source, resolve=True)]
    else:
        if not OmegaConf.is_list(listed) or not listed:
            raise BenchError(f"data.sources={listed!r}; give a list of datasets, e.g. "
                             "data.sources=[movie_reviews,tweets]")
        entries = []
        for item in OmegaConf.to_container(listed, resolve=True):
            if isinstance(item, str):
                path = config_dir() / "dataset" / f"{item}.yaml"
                if not path.is_file():
                    known = sorted(p.stem for p in (config_dir() / "dataset").glob("*.yaml"))
                    raise BenchError(f"data.sources names {item!r}, which is not a dataset in "
                                     f"conf/dataset ({', '.join(known)})")
                item = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
            if not isinstance(item, dict) or "name" not in item:
                raise BenchError(f"data.sources has {item!r}; give a dataset name or a dataset "
                                 "config with a name")
            entries.append(item)
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        name = dataset_label(entry)
        if name in out:
            raise BenchError(f"data.sources lists {name!r} twice; each source once")
        if name == dataset_label(target) and \
                (entry["name"] != "file" or entry.get("path") == target.get("path")):
            raise BenchError(f"source {name!r} is the target itself; transfer needs another "
                             "dataset")
        out[name] = entry
    return out


def source_seeds(cfg: DictConfig) -> list[int] | None:
    """The source-model seeds when a study trains several (``source.seeds``), else None: one
    model, of ``source.seed``, and records that carry no source seed."""
    many = OmegaConf.select(cfg, "source.seeds", default=None)
    return None if many is None else [int(s) for s in many]


def tuning_replicates(cfg: DictConfig) -> int:
    """Independent tunings per replicate seed (``hpo.replicates``, each its own sampler seed)."""
    return int(OmegaConf.select(cfg, "hpo.replicates", default=1) or 1)


def schedule_spec(cfg: DictConfig) -> dict[str, Any] | None:
    """``train.schedule`` as a plain dict; ``None`` in configs older than the key."""
    node = OmegaConf.select(cfg, "train.schedule", default=None)
    return None if node is None else OmegaConf.to_container(node, resolve=True)


def check_hpo(cfg: DictConfig) -> None:
    from bench.search_space import check_space, make_pruner

    hpo = cfg.hpo
    n = hpo.n_trials
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise BenchError(f"hpo.n_trials={n!r}; it must be an integer >= 0 (0 = no tuning)")
    if hpo.mode not in ("grid", "pareto"):
        raise BenchError(f"hpo.mode={hpo.mode!r}; use grid or pareto")
    replicates = OmegaConf.select(cfg, "hpo.replicates", default=1)
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise BenchError(f"hpo.replicates={replicates!r}; it must be an integer >= 1 "
                         "(independent tunings per replicate seed)")
    if n > 0 and "space" not in hpo:
        raise BenchError(f"hpo.n_trials={n} with hpo=none: that group has no search space to "
                         "tune; choose a tuner as well, e.g. hpo=tpe hpo.n_trials=6 (or hpo=random)")
    if replicates > 1 and n == 0:
        raise BenchError(f"hpo.replicates={replicates} repeats the tuning, but this study is "
                         "untuned (hpo.n_trials=0); add hpo=tpe")
    sampler = OmegaConf.select(cfg, "hpo.sampler", default="tpe")
    if sampler not in SAMPLERS:
        raise BenchError(f"hpo.sampler={sampler!r}; use one of {', '.join(SAMPLERS)}")
    from bench.search_space import startup_trials

    startup_trials(OmegaConf.select(cfg, "hpo.startup_trials", default=None), n)
    if n == 0 and hpo.mode == "grid":
        return
    from bench.search_space import entries

    spaces = {"hpo.space": entries(OmegaConf.to_container(hpo.space, resolve=True))}
    for strategy in strategies(cfg):
        if strategy.space:
            spaces[f"strategy.{strategy.name}.space"] = dict(strategy.space)
    for where, space in spaces.items():
        check_space(space, where)
        for name, spec in space.items():
            path = spec.get("path", name)
            if OmegaConf.select(cfg, path, default=None) is None:
                raise BenchError(f"{where}.{name} sets {path!r}, which is not a config key; use "
                                 "a key such as train.lr, train.weight_decay or model.dropout")
    if OmegaConf.select(cfg, "hpo.start_at_default", default=False) and hpo.mode == "grid":
        from bench.search_space import default_trial

        for strategy in strategies(cfg):  # the first trial is the default: it must be in range
            cell = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
            for path, value in strategy.defaults.items():
                OmegaConf.update(cell, path, value, merge=False)
            try:
                default_trial({**spaces["hpo.space"], **dict(strategy.space)}, cell)
            except BenchError as exc:
                raise BenchError(f"strategy {strategy.name!r}: {exc}") from None
    if cfg.baseline.name != "none":
        check_space(OmegaConf.to_container(cfg.baseline.space, resolve=True), "baseline.space")
    make_pruner(OmegaConf.to_container(hpo.pruner, resolve=True))
    check_storage(OmegaConf.select(cfg, "hpo.storage", default=None))
    if hpo.timeout is not None and not (isinstance(hpo.timeout, (int, float)) and hpo.timeout > 0):
        raise BenchError(f"hpo.timeout={hpo.timeout!r}; give seconds > 0 or null")


def study_identity(cfg: DictConfig) -> dict[str, Any]:
    """Everything that determines a cell's result, minus the grid (see :data:`GRID_KEYS`)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    # A constant LR is what every study did before train.schedule existed: leaving it out keeps
    # those studies' identity, so they resume and reproduce unchanged.
    if schedule_mod.is_constant(plain.get("train", {}).get("schedule")):
        plain.get("train", {}).pop("schedule", None)
    # Likewise one source, the only kind of study before data.sources existed.
    if plain.get("data", {}).get("sources", 0) is None:
        plain["data"].pop("sources")
    # Likewise TPE, the only sampler before hpo.sampler existed, with Optuna's start-up.
    if plain.get("hpo", {}).get("sampler") == "tpe":
        plain["hpo"].pop("sampler")
    space = plain.get("hpo", {}).get("space")
    if isinstance(space, dict):  # entries set to null are not searched
        plain["hpo"]["space"] = {k: v for k, v in space.items() if v is not None}
    if plain.get("model", {}).get("no_decay", 0) is None:  # decay on every weight, as before
        plain["model"].pop("no_decay")
    if plain.get("hpo", {}).get("startup_trials", 0) is None:
        plain["hpo"].pop("startup_trials")
    # Likewise a fit counted in rounds (no train.lengths, no probe_lengths).
    for key in ("lengths", "probe_lengths"):
        if plain.get("train", {}).get(key, 0) is None:
            plain["train"].pop(key)
    # The baseline's fixed C grid is the baseline's own definition, in its cells' identity
    # (cell_hash, via strategy_definitions) like a strategy's: a grid never touches the neural
    # cells, so studies whose baseline rows were re-recorded on a grid keep their identity.
    plain.get("baseline", {}).pop("grid", None)
    # Likewise tunings that did not start at the default setting, and fits without extension.
    if not plain.get("hpo", {}).get("start_at_default", True):
        plain["hpo"].pop("start_at_default")
    if not plain.get("hpo", {}).get("default_fit", True):
        plain["hpo"].pop("default_fit")
    if not plain.get("train", {}).get("extend_epochs", 1):
        plain["train"].pop("extend_epochs")
    for key in GRID_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = plain
        for part in filter(None, parent.split(".")):
            node = node.get(part, {})
        node.pop(leaf, None)
    return plain


def study_hash(cfg: DictConfig) -> str:
    return stable_hash(study_identity(cfg))


def strategy_definitions(cfg: DictConfig) -> dict[str, Any]:
    """Each selected strategy's whole definition, as composed (its tuned ``space`` included).

    A ``train`` default equal to the study's own ``train`` value, or a ``space`` entry equal to
    ``hpo.space``'s of the same name (or any, untuned), changes nothing and is left out: a
    strategy that states its own range (the probe's, on the TextCNN the same as everyone's)
    keeps the identity of the studies that ran it before it said so."""
    selected = selected_strategies(cfg)
    train = OmegaConf.to_container(cfg.train, resolve=True)
    from bench.search_space import entries

    space = entries(OmegaConf.to_container(cfg.hpo.space, resolve=True)) if "space" in cfg.hpo \
        else {}
    untuned = not OmegaConf.select(cfg, "hpo.n_trials", default=0)  # no space is searched
    out = {}
    for name, spec in selected.items():
        spec = dict(spec or {})
        own = {k: v for k, v in (spec.pop("train", None) or {}).items() if train.get(k) != v}
        tuned = {k: v for k, v in (spec.pop("space", None) or {}).items()
                 if space.get(k) != v and not untuned}
        out[name] = {**spec, **({"train": own} if own else {}),
                     **({"space": tuned} if tuned else {})}
    grid = OmegaConf.select(cfg, "baseline.grid", default=None)
    if cfg.baseline.name != "none" and grid:  # the baseline's own selection rule (see below)
        out[str(cfg.baseline.name)] = {"grid": [float(c) for c in grid]}
    return out


def cell_hash(cfg: DictConfig, name: str) -> str:
    """The identity of one strategy's cells: the study's identity plus the strategy's
    definition. Records and Optuna study names carry it, so nothing made under another
    definition or configuration (on a shared storage too) is ever mixed in. In a study with
    several sources a method is ``strategy@source``; its strategy's definition counts."""
    base, _ = split_method(name)
    return stable_hash([study_hash(cfg), name, strategy_definitions(cfg).get(base)])
