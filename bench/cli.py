"""``transfer-bench``: thin entry points over the library (:data:`USAGE` lists them)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from bench.errors import BenchError

USAGE = """\
usage: transfer-bench COMMAND [ARGS]

commands:
  sweep [OVERRIDES] [-m]      run or resume a study (Hydra overrides; -m: one study per job)
  validate [OVERRIDES]        check a study's config and list its cells; writes nothing
  ls [KIND ...]               what exists: datasets, models, strategies, experiments, estimators
  report DIR [DIR ...]        tables, statistics, plots and report/index.html from the records
  reproduce DIR [--all]       rerun recorded cells in a fresh folder and compare
  data list|fetch|inspect     the dataset registry; check your data before training
  benchmark [OVERRIDES]       training speed of the suite next to a plain PyTorch loop

examples:
  transfer-bench ls strategies
  transfer-bench validate experiment=movie_to_amazon_reference
  transfer-bench sweep experiment=movie_to_amazon_reference
  transfer-bench report results/movie_to_amazon_reference

transfer-bench COMMAND --help shows a command's options. A problem you can fix prints one line
"error: ..." and exits with status 2 (TRANSFER_BENCH_DEBUG=1 shows the traceback)."""

EXIT_USAGE = 2
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name",
                     "-cn", "--config-dir", "-cd", "--experimental-rerun"}


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def guarded(func: Callable[[], object]) -> object:
    """Run ``func``; a :class:`BenchError` becomes one line on stderr and exit status 2."""
    try:
        return func()
    except BenchError as exc:
        if os.environ.get("TRANSFER_BENCH_DEBUG"):
            raise
        _fail(str(exc))


def _one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf messages span lines with internals; keep what names the problem."""
    skip = ("full_key", "object_type", "reference_type", "Set the environment", "value:")
    lines = [ln.strip() for ln in str(exc).splitlines()]
    if exc.__cause__ is not None:  # e.g. "Key 'sizez' is not in struct" for a typo
        lines += [ln.strip() for ln in str(exc.__cause__).splitlines()[:1]]
    text = " ".join(ln for ln in lines if ln and not ln.startswith(skip))
    text = text.split(" Config search path:")[0]  # Hydra internals, not the user's problem
    missing = re.search(r"Could not (?:load|find) '([\w@.]+)/([^']+)'", text)
    if missing and "Available options" not in text:  # a list element (strategy=[nope])
        from bench.config import config_dir

        group = missing[1].split("@")[0]
        names = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        if names:
            text = f"{text} The {group} choices: {', '.join(names)}"
    return text + " (`transfer-bench sweep --cfg job` shows the valid keys)" \
        if "not in struct" in text else text


def hydra_overrides(argv: Sequence[str]) -> list[str]:
    """The override arguments among Hydra's command-line flags."""
    out, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in _FLAGS_WITH_VALUE:
            skip_next = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def validate_overrides(overrides: Sequence[str]) -> list:
    """Compose and check every combination a (multi)run would launch, before any job starts.

    Returns the composed configs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bench.config import check, compose_config

    parser = OverridesParser.create()
    parsed = []
    for override in overrides:
        try:
            parsed += parser.parse_overrides([override])
        except Exception as exc:  # noqa: BLE001 - OverrideParseException and friends
            raise BenchError(f"cannot parse the override {override!r}: {_one_line(exc)}") from None
    try:
        configs = []
        for batch in BasicSweeper.split_arguments(parsed, None):
            for combo in batch:
                configs.append(compose_config(combo))
                check(configs[-1])
        return configs
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - Hydra/OmegaConf raise many types for bad overrides
        raise BenchError(_one_line(exc)) from None


def swept_keys(overrides: Sequence[str]) -> list[str]:
    """The keys a multirun sweeps over (``a=1,2``, ``range(...)``, ``choice(...)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def sweep(argv: Sequence[str]) -> None:
    """Run a study through Hydra (override grammar, ``-m`` multirun, ``--cfg job``)."""
    import hydra

    from bench.config import config_dir

    guarded(lambda: validate_overrides(hydra_overrides(argv)))
    conf = str(guarded(config_dir))
    swept = swept_keys(hydra_overrides(argv))

    def task(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from bench.study.sweep import multirun_study_name, run_study, task_overrides

        overrides = task_overrides() or []
        if HydraConfig.get().mode == RunMode.MULTIRUN and not any(
                o.lstrip("+").startswith("study=") for o in overrides):
            cfg.study = multirun_study_name(str(cfg.study), swept, overrides)  # a folder per job

        if cfg.get("workers", 1) == 1:
            guarded(lambda: run_study(cfg))
        else:  # K worker processes on this study, then its report
            from bench.study import workers

            guarded(lambda: workers.run(cfg, task_overrides() or []))

    sys.argv = ["transfer-bench sweep", *argv]
    hydra.main(config_path=conf, config_name="config", version_base="1.3")(task)()


def ls(argv: Sequence[str]) -> None:
    from bench.catalog import KINDS, listing
    from bench.config import config_dir

    parser = argparse.ArgumentParser(prog="transfer-bench ls",
                                     description="What exists to run, one line each.")
    parser.add_argument("kinds", nargs="*", metavar="KIND",
                        help=f"any of {', '.join(KINDS)} (default: all)")
    args = parser.parse_args(argv)
    for kind in args.kinds:
        if kind not in KINDS:
            raise BenchError(f"ls {kind!r}: choose from {', '.join(KINDS)}")
    print(listing(list(args.kinds or KINDS), config_dir()))


def validate(argv: Sequence[str]) -> None:
    """Every up-front check of ``sweep``, then what each job would run; nothing is written."""
    from bench import config as config_mod
    from bench.folder import RECORDS, dataset_label, load_records
    from bench.study import claim
    from bench.training.protocol import Protocol

    if any(a in ("-h", "--help") for a in argv):
        print("usage: transfer-bench validate [OVERRIDES]\n\nCompose the config as sweep would "
              "(Hydra overrides, comma lists for a multirun), run every up-front check, and "
              "print each job's study folder, protocol and cells with the labels each replicate "
              "may use. Reads no data and writes nothing.")
        return
    configs = validate_overrides(hydra_overrides(argv))
    for cfg in configs:
        strategies = [s.name for s in config_mod.strategies(cfg)]
        sizes = config_mod.sizes(cfg)
        out = Path(cfg.paths.results) / str(cfg.study)
        claim.claim(out, cfg)
        claim.check_location(out)
        protocol = Protocol.from_config(cfg.get("protocol"))
        recorded = len(load_records(out / RECORDS)) if (out / RECORDS).exists() else 0
        baseline = [] if cfg.baseline.name == "none" else [str(cfg.baseline.name)]
        methods = [*strategies, *baseline, "majority"]
        sources = config_mod.source_configs(cfg)
        val = cfg.data.target.get("val_size")
        print(f"study {cfg.study} -> {out} "
              f"({f'{recorded} records so far: it resumes' if recorded else 'new'})")
        print(f"  {' + '.join(sources) or 'no source'} -> {dataset_label(dict(cfg.data.target))}"
              f"; model {cfg.model.get('path') or cfg.model.get('weights') or cfg.model._target_}")
        print(f"  protocol {protocol.describe()}")
        trials = int(cfg.hpo.get("n_trials") or 0)
        print(f"  {len(methods)} methods x {len(sizes)} sizes x {len(cfg.seeds)} seeds = "
              f"{len(methods) * len(sizes) * len(cfg.seeds)} replicates; "
              + (f"tuning {trials} trials per cell and seed" if trials else "untuned"))
        print(f"  methods: {', '.join(methods)}")
        for size in sizes:
            if protocol.uses_validation_split:
                labels = (f"{size} + {val} validation = {size + val}"
                          if isinstance(val, int) and size != "all"
                          else f"n + the validation split ({val})")
            else:
                labels = "n, the whole training pool" if size == "all" else f"{size}"
            print(f"  size {size}: {labels} target labels per replicate")
        if recorded:
            _print_progress(load_records(out / RECORDS), methods, [str(s) for s in sizes],
                            len(cfg.seeds))
    print(f"valid: {len(configs)} job(s); nothing was written")


def _print_progress(records: list, methods: list[str], sizes: list[str], seeds: int) -> None:
    """What a resumed study has done and what it cost so far, per method and size."""
    from bench.folder import duration_text as text, progress

    done = progress(records)
    cell = {(r.strategy, r.size): r for r in done.itertuples()}
    names = [*methods, *(s for s in dict.fromkeys(done["strategy"]) if s not in methods)]
    rows = [["method", *(f"n={z}" for z in sizes)]]
    for name in names:
        rows.append([name, *(f"{cell[name, z].records}/{seeds} ({text(cell[name, z].seconds)})"
                             if (name, z) in cell else f"0/{seeds}" for z in sizes)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"  progress: replicates recorded of {seeds} seeds per cell (compute in them: "
          "tuning or selection + final fit)")
    for r in rows:
        print("    " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    by_size = done.groupby("size")["seconds"].sum()
    print(f"  compute recorded: {text(float(done['seconds'].sum()))} ("
          + ", ".join(f"n={z}: {text(float(by_size.get(z, 0.0)))}" for z in sizes) + ")")


def report(argv: Sequence[str]) -> None:
    from bench.analysis import publish

    parser = argparse.ArgumentParser(
        prog="transfer-bench report",
        description="Tables, statistics and plots from a study's records (no Hydra); written "
                    "to <study>/report/ and printed.")
    parser.add_argument("dirs", nargs="+", type=Path, help="study directories (results/<study>)")
    parser.add_argument("--metric", default="test_acc",
                        choices=["test_acc", "test_f1", "val_acc", "val_f1"])
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--against", action="append", metavar="STRATEGY",
                        help="also compare every strategy with this one (gains_vs_STRATEGY.md); "
                             "repeatable; the comparison with scratch is always made")
    parser.add_argument("--side-by-side", type=Path, metavar="FILE", action="append",
                        help="also write one table of all the studies given, cell by cell "
                             "(e.g. the same study under two protocols), to FILE: Markdown, or "
                             "a page with each study's table and curves when FILE ends in .html; "
                             "repeatable")
    args = parser.parse_args(argv)
    for d in args.dirs:
        if not d.is_dir():
            raise BenchError(f"{d} is not a study directory; give results/<study>")
    if args.side_by_side is not None and len(args.dirs) < 2:
        raise BenchError("--side-by-side needs two or more study directories")
    for d in args.dirs:
        out, text, notes = publish.publish(d, args.metric, against=args.against or (),
                                           plots=not args.no_plots)
        print(f"## {d.name}\n\n{text}")
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"report written to {out} (open {out / 'index.html'})", file=sys.stderr)
    for target in args.side_by_side or ():
        text = publish.side_by_side(args.dirs, target, args.metric)
        print(f"## side by side\n\n{text}")
        print(f"side-by-side written to {target}", file=sys.stderr)


def data(argv: Sequence[str]) -> None:
    from bench.cache import cache_root
    from bench.data.sources import REGISTRY, load_dataset

    parser = argparse.ArgumentParser(prog="transfer-bench data", description="The dataset registry.")
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("list", help="list fetchable datasets")
    fetch = sub.add_parser("fetch", help="download, verify, extract and parse datasets")
    fetch.add_argument("names", nargs="+")
    fetch.add_argument("--cache", default=None, help="cache folder (default ~/.cache/transfer-bench)")
    check = sub.add_parser(
        "inspect", help="check data before training: dropped rows, classes per split, "
                        "duplicates and leakage, lengths, sizes; exit 2 on errors")
    check.add_argument("names", nargs="*", metavar="NAME",
                       help="registry datasets: SOURCE TARGET, or a TARGET alone (with --file: "
                            "the source)")
    check.add_argument("--file", type=Path, help="your own CSV/TSV/JSONL file as the target")
    check.add_argument("--text-column", default="text")
    check.add_argument("--label-column", default="label")
    check.add_argument("--split-column", default=None, help="column of train / val / test")
    check.add_argument("--delimiter", default=None, help="e.g. ';' or '\\t' (default: detected)")
    check.add_argument("--sizes", nargs="+", default=None,
                       help="target training sizes to check (default: the config's data.sizes)")
    check.add_argument("--max-len", type=int, default=None,
                       help="the target's max_len in tokens (default: its dataset config)")
    check.add_argument("--cache", default=None, help="cache folder (default ~/.cache/transfer-bench)")
    args = parser.parse_args(argv)
    if args.verb == "list":
        for name, (pkg, _, about) in sorted(REGISTRY.items()):
            print(f"{name:16} {pkg.spec:28} {about}")
        return
    cache = cache_root(args.cache)
    if args.verb == "inspect":
        _inspect(args, cache)
        return
    for name in args.names:
        ds = load_dataset({"name": name}, cache)
        counts = {c: int((ds.labels == i).sum()) for i, c in enumerate(ds.classes)}
        print(f"{name}: {len(ds)} texts, {len(ds.classes)} classes {counts}")
        for fname, path in ds.files.items():
            print(f"  {fname}: {path}")


def _inspect(args: argparse.Namespace, cache: Path) -> None:
    """``data inspect``: print the report; errors end in one line and exit status 2."""
    from omegaconf import OmegaConf

    from bench.config import config_dir
    from bench.data.inspect import format_report, inspect_configs

    def dataset_cfg(name: str) -> dict:
        path = config_dir() / "dataset" / f"{name}.yaml"
        defaults = OmegaConf.to_container(OmegaConf.load(config_dir() / "dataset" / "file.yaml"))
        split_keys = {k: defaults[k] for k in ("max_len", "test_size", "val_size")}
        return {**split_keys, **(OmegaConf.to_container(OmegaConf.load(path))
                                 if path.is_file() else {"name": name})}

    names = list(args.names)
    if "file" in names:
        raise BenchError("for your own data use --file PATH (with --text-column, --label-column)")
    if args.file is not None:
        target = {**dataset_cfg("file"), "path": str(args.file), "text_column": args.text_column,
                  "label_column": args.label_column, "split_column": args.split_column,
                  "delimiter": args.delimiter}
        if len(names) > 1:
            raise BenchError("with --file give at most one NAME, the source dataset")
        source = dataset_cfg(names[0]) if names else None
    else:
        if not 1 <= len(names) <= 2:
            raise BenchError("give one dataset (the target) or two (source, target), or --file PATH")
        target = dataset_cfg(names[-1])
        source = dataset_cfg(names[0]) if len(names) == 2 else None
    if args.max_len is not None:
        if args.max_len < 1:
            raise BenchError(f"--max-len {args.max_len}; give a positive number of tokens")
        target["max_len"] = args.max_len
    raw = args.sizes or [str(s) for s in OmegaConf.load(config_dir() / "config.yaml").data.sizes]
    sizes: list[int | str] = []
    for s in raw:
        if s != "all" and not (s.isdigit() and int(s) > 0):
            raise BenchError(f"--sizes has {s!r}; sizes are positive integers or 'all'")
        sizes.append(s if s == "all" else int(s))
    result = inspect_configs(source, target, sizes, cache)
    print(format_report(result))
    result.raise_for_errors()


def reproduce(argv: Sequence[str]) -> None:
    from bench import reproduce as rep

    parser = argparse.ArgumentParser(
        prog="transfer-bench reproduce",
        description="Rerun recorded cells from a study's manifest in a fresh folder and compare. "
                    "Exit status 1 when a difference exceeds the tolerance.")
    parser.add_argument("dir", type=Path, help="a study directory (results/<study>)")
    parser.add_argument("--cells", type=int, default=3, help="cells to rerun, one seed (default 3)")
    parser.add_argument("--all", action="store_true", help="rerun every record")
    parser.add_argument("--out", type=Path, default=None,
                        help="fresh output folder (default <dir>/reproductions/<time>)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="allowed |difference| (default: exact on the manifest's machine and "
                             f"software, else {rep.CROSS_MACHINE_TOLERANCE})")
    parser.add_argument("--reuse-cache", action="store_true",
                        help="reuse cached tensors, vectors and source model instead of rebuilding")
    parser.add_argument("--strategy", action="append", default=[], metavar="NAME",
                        help="only records of this strategy, as records name it (frozen, "
                             "full@tweets, tfidf_logreg); repeat for several")
    parser.add_argument("--size", action="append", default=[], metavar="N",
                        help="only records of this size; repeat for several")
    parser.add_argument("--seed", action="append", default=[], type=int, metavar="N",
                        help="only records of this seed; repeat for several")
    args = parser.parse_args(argv)
    if args.cells < 1:
        raise BenchError(f"--cells {args.cells}; give at least 1")
    if not args.dir.is_dir():
        raise BenchError(f"{args.dir} is not a study directory; give results/<study>")
    table, out, ok = rep.run(args.dir, args.cells, args.all, args.out, args.tolerance,
                             args.reuse_cache, strategies=args.strategy, sizes=args.size,
                             seeds=args.seed)
    print(table.to_markdown(index=False))
    print(f"\n{int(table['within'].sum())}/{len(table)} within tolerance; written to {out}")
    if not ok:
        sys.exit(1)


def benchmark(argv: Sequence[str]) -> None:
    from bench import benchmark as bm

    parser = argparse.ArgumentParser(prog="transfer-bench benchmark",
                                     description="Training throughput of the suite vs a plain "
                                                 "PyTorch loop, per-trial overhead, study time.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer=gpu")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per repetition")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each loop")
    parser.add_argument("--examples", type=int, default=None,
                        help="train on N random source texts (default: all for the TextCNN, "
                             "512 for a transformer)")
    parser.add_argument("--concurrency", default="",
                        help="also measure K concurrent trial processes for each K, e.g. 1,2,4")
    parser.add_argument("--concurrent-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--strategies", default="",
                        help="also time each strategy's own fit on the target (e.g. "
                             "frozen,full,lora,bitfit; cached-feature ones also live)")
    parser.add_argument("--strategy-n", type=int, default=200,
                        help="target labels for --strategies fits (default 200)")
    parser.add_argument("--precision", default=None,
                        help="instead: this precision (e.g. bf16-mixed) against fp32, paired on "
                             "the same --strategies fits (default full,lora,bitfit) scored on "
                             "the test split; --seeds of them, --epochs rounds each")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for --precision (default 3)")
    parser.add_argument("--study", action="store_true",
                        help="also time the default study (`transfer-bench sweep`) end to end")
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"),
                        help="folder for the JSON (default results/benchmark)")
    args = parser.parse_args(argv)
    if args.concurrent_worker:  # one process of --concurrency (internal)
        folder, index, count = args.concurrent_worker.rsplit(":", 2)
        bm.concurrent_worker(args.overrides, args.epochs, args.examples, Path(folder),
                             int(index), int(count))
        return
    try:
        ks = [int(k) for k in args.concurrency.split(",") if k.strip()]
    except ValueError:
        raise BenchError(f"--concurrency {args.concurrency!r}; give process counts, e.g. "
                         "1,2,4") from None
    if any(k < 1 for k in ks):
        raise BenchError(f"--concurrency {args.concurrency!r}; counts must be >= 1")
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    if args.strategy_n < 2:
        raise BenchError(f"--strategy-n {args.strategy_n}; give at least 2 labels")
    if args.precision:
        if args.seeds < 2:
            raise BenchError(f"--seeds {args.seeds}; a paired interval needs at least 2")
        report = bm.run_precision(args.overrides, args.precision,
                                  names or ["full", "lora", "bitfit"], args.strategy_n,
                                  args.epochs, args.seeds, args.out)
        print(report["text"])
        print(f"\nwritten to {report['path']}")
        return
    report = bm.run(args.overrides, args.epochs, args.repeats, args.study, args.out,
                    args.examples, ks, names, args.strategy_n)
    print(bm.table(report))
    print(f"\nwritten to {report['path']}")


COMMANDS = {"sweep": sweep, "validate": validate, "ls": ls, "report": report,
            "reproduce": reproduce, "data": data, "benchmark": benchmark}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            _fail(f"unknown command {argv[0]!r}; use one of {', '.join(COMMANDS)}")
        sys.exit(0 if argv else EXIT_USAGE)
    command, rest = argv[0], argv[1:]
    if command == "sweep":
        sweep(rest)
    else:
        guarded(lambda: COMMANDS[command](rest))


if __name__ == "__main__":
    main()
