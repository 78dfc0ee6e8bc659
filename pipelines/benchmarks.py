"""Generate BENCHMARKS.md: matmul peak, predict time per stage and memory, training step with each penalty.

One command runs the three benchmark scripts in subprocesses, one after the other (never at once, so they do
not compete for the cores), reads the JSON each writes, and renders the page with
``pipelines/benchmarks_page.py``:

1. ``bench_matmul.py``: the machine's fp32 and bf16 matmul peak (2048², best of 5) and the network's FLOP per
   slice, counted;
2. ``bench_predict.py``: ``predict_scan`` on a 512 x 512 x 300 phantom in each configuration (fp32; bf16 +
   channels-last): seconds per stage and in total, slices per second, the network's GFLOP/s against the peak,
   peak RSS, bf16 agreement;
3. ``bench_train.py``: the training step at 384² batch 2 without a penalty and with each registered penalty,
   step time, overhead and peak RSS.

The page states the machine (CPU model, cores, torch threads, RAM, versions, commit, date) and the 1-minute
load average before and after each benchmark (the machine may be shared: compare figures only from a quiet
machine), the exact command of each table, and the targets of issue 5 (and issue 3's penalty cost) as met or
not met. ``--quick`` shrinks everything (a 64² x 6-slice scan, 64² steps, one repeat) to check the generator in
well under a minute on an idle machine; its page says so. The page is written atomically and an existing one is
kept unless ``--overwrite`` is given.

Usage:
    python pipelines/benchmarks.py [--quick] [--out BENCHMARKS.md] [--configs fp32,bf16_cl] [--model CKPT]
        [--threads N] [--work DIR] [--overwrite]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

PIPELINES = Path(__file__).resolve().parent
REPO = PIPELINES.parent
WORK_PLACEHOLDER = "$WORK"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
"""CPU flags that decide the speed of fp32 and bf16 convolutions; the page lists those present."""
DEFAULT_CONFIGS = "fp32,bf16_cl"

FULL_ARGS: dict[str, list[str]] = {
    "matmul": ["--size", "2048", "--repeats", "5", "--network-slice-size", "384"],
    "predict": ["--slices", "300", "--size", "512", "--slice-size", "384", "--repeats", "3"],
    "train": ["--size", "384", "--batch", "2", "--repeats", "5", "--warmup", "1"],
}
"""Arguments of each benchmark script for the real page."""
QUICK_ARGS: dict[str, list[str]] = {
    "matmul": ["--size", "256", "--repeats", "1", "--network-slice-size", "64"],
    "predict": [
        "--slices",
        "6",
        "--size",
        "64",
        "--extra-slices",
        "2",
        "--slice-size",
        "64",
        "--no-overview",
        "--repeats",
        "2",
    ],
    "train": ["--size", "64", "--batch", "2", "--repeats", "1", "--warmup", "1"],
}
"""Arguments of each benchmark script for ``--quick``."""


def load_script(name: str) -> ModuleType:
    """Import ``pipelines/<name>.py`` as a module (the folder is not a package).

    Examples:
        >>> load_script("benchmarks_page").MET
        'met'
    """
    path = PIPELINES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"covidseg_pipelines_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def split_configs(
    text: str, predict_configs: Sequence[str], train_configs: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Split ``--configs`` (comma-separated) into the predict and training configurations it names.

    A name may be a configuration of either benchmark (``fast_bf16_cl`` exists only for predict).

    Raises:
        SystemExit: An unknown or empty list, with the valid names.

    Examples:
        >>> split_configs("fp32,bf16_cl,fast_bf16_cl", ["fp32", "bf16_cl", "fast_bf16_cl"], ["fp32", "bf16_cl"])
        (['fp32', 'bf16_cl', 'fast_bf16_cl'], ['fp32', 'bf16_cl'])
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    valid = list(dict.fromkeys([*predict_configs, *train_configs]))
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise SystemExit(f"--configs {text!r}: unknown or no configuration {unknown}; expected some of {valid}")
    return [n for n in names if n in predict_configs], [n for n in names if n in train_configs]


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if flags and model:
                break
    return model, [f for f in CPU_FLAGS if f in flags]


def _ram_gib() -> float:
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) / 2**20
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2**30


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return "unknown (git not found)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    """The machine and software the benchmarks run on (read without importing torch).

    Examples:
        >>> info = machine_info()
        >>> info["cores"] >= 1 and info["ram_gib"] > 0
        True
    """
    model, flags = _cpu_model_and_flags()
    return {
        "cpu_model": model,
        "cpu_flags": flags,
        "cores": os.cpu_count() or 1,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "covidseg": _version("covidseg"),
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def shown_command(cmd: Sequence[str], work: Path) -> str:
    """``cmd`` as a user would type it: ``python``, repository-relative scripts, the work folder as ``$WORK``.

    Examples:
        >>> shown_command([sys.executable, str(PIPELINES / "bench_train.py"), "--json", "/tmp/w/t.json"],
        ...               Path("/tmp/w"))
        'python pipelines/bench_train.py --json $WORK/t.json'
    """
    words = ["python" if cmd[0] == sys.executable else cmd[0]]
    for word in cmd[1:]:
        if word.startswith(str(REPO) + os.sep):
            word = os.path.relpath(word, REPO)
        word = word.replace(str(work), WORK_PLACEHOLDER)
        words.append(word if word.startswith(WORK_PLACEHOLDER) else shlex.quote(word))
    return " ".join(words)


def run_benchmark(name: str, cmd: list[str], json_path: Path, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one benchmark script, echo its output, and parse the JSON it wrote.

    Returns:
        The parsed JSON and the run's record (``name``, ``command``, ``load_before``, ``load_after``, ``wall_s``).

    Raises:
        SystemExit: The script failed or wrote no JSON (with the end of its output).
    """
    shown = shown_command(cmd, work)
    print(f"[{name}] {shown}", flush=True)
    load_before = list(os.getloadavg())
    start = time.perf_counter()
    log = work / f"{name}.log"
    tail: list[str] = []
    with log.open("w", encoding="utf-8") as out:
        with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout or ():
                out.write(line)
                print(f"  | {line}", end="", flush=True)
                tail = [*tail[-39:], line]
        code = proc.returncode
    wall = time.perf_counter() - start
    load_after = list(os.getloadavg())
    if code != 0 or not json_path.is_file():
        raise SystemExit(f"benchmark {name} failed (exit {code}); the end of its output:\n{''.join(tail)}")
    print(f"[{name}] done in {wall:.0f} s", flush=True)
    record = {"name": name, "command": shown, "load_before": load_before, "load_after": load_after, "wall_s": wall}
    return dict(json.loads(json_path.read_text(encoding="utf-8"))), record


def generate(args: argparse.Namespace, work: Path) -> str:
    """Run the benchmarks named by ``args`` in ``work`` and return the page."""
    predict_configs, train_configs = split_configs(
        args.configs, list(load_script("bench_predict").CONFIGS), list(load_script("bench_train").CONFIGS)
    )
    sizes = QUICK_ARGS if args.quick else FULL_ARGS
    threads = ["--threads", str(args.threads)]
    model = ["--model", str(args.model.resolve())] if args.model else []
    script = {name: [sys.executable, str(PIPELINES / f"bench_{name}.py")] for name in ("matmul", "predict", "train")}
    machine = machine_info()
    steps: list[dict[str, Any]] = []
    parsed: dict[str, dict[str, Any] | None] = {"matmul": None, "predict": None, "train": None}
    plan: list[tuple[str, list[str]]] = [("matmul", [*sizes["matmul"], *threads, *model])]
    if predict_configs:
        extra = ["--configs", *predict_configs, "--work", str(work / "predict"), *threads, *model]
        plan.append(("predict", [*sizes["predict"], *extra]))
    if train_configs:
        plan.append(("train", [*sizes["train"], "--configs", *train_configs, *threads]))
    for name, options in plan:
        json_path = work / f"{name}.json"
        data, record = run_benchmark(name, [*script[name], *options, "--json", str(json_path)], json_path, work)
        parsed[name] = data
        steps.append(record)
    page = load_script("benchmarks_page")
    return str(
        page.render_page(
            command=" ".join(["python", "pipelines/benchmarks.py", *args.given]),
            quick=args.quick,
            machine=machine,
            steps=steps,
            matmul=parsed["matmul"],
            predict=parsed["predict"],
            train=parsed["train"],
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny sizes and one repeat (checks the generator).")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="The page to write.")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="Comma-separated configurations.")
    parser.add_argument("--model", type=Path, default=None, help="Checkpoint for predict (default: random weights).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of every benchmark (0: default).")
    parser.add_argument("--work", type=Path, default=None, help="Keep scans, logs and JSON here (default: temp).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing page.")
    args = parser.parse_args(argv)
    args.given = sys.argv[1:] if argv is None else list(argv)
    from covidseg.errors import OutputExistsError
    from covidseg.io.atomic import atomic_path, check_writable

    try:
        check_writable(args.out, args.overwrite)  # refuse before the benchmarks run, not after
    except OutputExistsError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.model is not None and not args.model.is_file():
        raise SystemExit(f"--model {args.model} is not a file; give a checkpoint written by covidseg train")
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="covidseg_benchmarks_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        text = generate(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    with atomic_path(args.out, overwrite=args.overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"page written to {args.out}")


if __name__ == "__main__":
    main()
