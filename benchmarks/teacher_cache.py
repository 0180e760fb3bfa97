"""What keeping the teacher's cache between runs saves a race: one rung, timed with and without it.

A race trains each finalist rung by rung, and each rung is one ``train()`` call that stops at the rung's
step; with ``cache_teacher`` every call used to pass the teacher over the whole training set first.
kdsearch now keeps the last host cache for the next run over the same teacher and images. This times
the first rung of the second setting's race (an ``mbconv`` student of the committed ``mbconv4`` teacher,
the 234-step recipe of ``race_truth/mbconv4.yaml``, stopped at step 11, from a fresh directory) with the
cache kept from the run before and with it cleared, interleaved, after a warm-up, and prints the ratio.

    OMP_NUM_THREADS=1 python benchmarks/teacher_cache.py --json benchmarks/teacher_cache.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from inherit_mbconv import ARCHS, RECIPE
from race_arms import load_runtime

RUNG = 11  # the first rung of --race 6 (eta 3, --race-budget 4/3) at 234 steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rungs per arm")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from kdsearch.arch import Arch
    from kdsearch.distill import engine
    from kdsearch.distill.stage import build_student, start_student, student_space
    from kdsearch.distill.trainer import train

    dataset, teacher, study = load_runtime(RECIPE)
    config = replace(study.train, init="inherit", seed=1000)
    arch = Arch.from_dict(json.loads(ARCHS.read_text())[0]["arch"])

    def rung(kept: bool) -> float:
        if not kept:
            engine._LAST_HOST_CACHE.clear()
        with tempfile.TemporaryDirectory() as work:
            t0 = time.perf_counter()
            student = build_student(arch, dataset, config.seed, "mbconv")
            start_student(student, student_space(arch, "mbconv"), teacher, config.init, seed=config.seed)
            train(student, dataset, Path(work), config, teacher=teacher.module, stop_step=RUNG)
            return time.perf_counter() - t0

    rung(False)  # warm-up; leaves the cache for the first kept run
    times: dict[str, list[float]] = {"kept": [], "cleared": []}
    for _ in range(args.repeats):
        for arm in ("kept", "cleared"):
            times[arm].append(rung(arm == "kept"))
    med = {arm: statistics.median(v) for arm, v in times.items()}
    print(f"one {RUNG}-step rung, median of {args.repeats}: cache kept {med['kept']:.2f} s, cleared {med['cleared']:.2f} s, "
          f"{med['cleared'] / med['kept']:.2f}x")
    if args.json:
        from kdsearch.files import write_json

        write_json(args.json, {"command": "python benchmarks/teacher_cache.py " + " ".join(sys.argv[1:]),
                               "rung_steps": RUNG, "seconds": times, "median_s": med,
                               "ratio_cleared_over_kept": med["cleared"] / med["kept"]})


if __name__ == "__main__":
    main()
