"""What a finished search leaves: the leaderboard (ranked by the winner rule), winner.json (with
the rule and the reason the winner won), the Pareto plot, and the :class:`SearchResult`."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from kdsearch.arch import Arch
from kdsearch.errors import BudgetError, SearchError
from kdsearch.files import write_text
from kdsearch.rundir import LEADERBOARD, PARETO_PLOT, RaceRecord, SpeedRecord, WinnerRecord
from kdsearch.search.config import RACE_RANKS, SearchConfig
from kdsearch.search.winner import explain_winner, pick_winner, rank_by_rule

__all__ = ["SearchResult", "summarise_study", "leaderboard_rows", "rank_leaderboard", "json_dumps", "record_race"]


@dataclass
class SearchResult:
    winner: Arch
    winner_row: dict[str, Any]  # the winner's leaderboard row, plus ``rule`` and ``reason``
    rows: list[dict[str, Any]] = field(default_factory=list)  # every complete trial, in leaderboard order
    feasible: int = 0


def json_dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): how the leaderboard writes an arch."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def leaderboard_rows(study) -> list[dict[str, Any]]:
    """One row per COMPLETE trial, in trial order."""
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        rows.append({
            "trial": t.number,
            "arch": json_dumps(t.user_attrs["arch"]),
            **{f"score_{k}": v for k, v in t.user_attrs["scores"].items()},
            "params": t.user_attrs["params"],
            "flops": t.user_attrs["flops"],
            "latency_ms": t.user_attrs.get("latency"),
            **{k: v for k, v in t.user_attrs.items() if k.startswith(("pred_ms_b", "pred_speedup_b"))},
            "feasible": all(v <= 0 for v in t.constraints.values()) if t.constraints else True,
            "reused": t.user_attrs.get("reused", False),
        })
    return rows


def rank_leaderboard(rows: list[dict[str, Any]], winner: dict[str, Any], score: str, rule: str) -> list[dict[str, Any]]:
    """The rows as the leaderboard lists them: within budget first, ordered by ``rule`` with the
    winner's trials on top; then the over-budget rows (which cannot win) by ``score``."""
    feasible = rank_by_rule([r for r in rows if r["feasible"]], score, rule)
    feasible.sort(key=lambda r: r["arch"] != winner["arch"])  # stable: the rest keep the rule's order
    over = sorted((r for r in rows if not r["feasible"]), key=lambda r: -r[score])
    return feasible + over


def summarise_study(study, config: SearchConfig, out_dir: Path, *, speed=None, space=None, shape=None,
                    note: Callable[[str], None] = lambda _m: None) -> SearchResult:
    """Write leaderboard.csv, winner.json and pareto.png from the study's complete trials.

    With a speed budget (``speed``, a :class:`~kdsearch.search.speed.SpeedModel`), the leading
    candidates are timed for real against the teacher and the budget is judged on those timings
    (:func:`kdsearch.search.speed.confirm_fastest`); ``search/speed.json`` records them.
    """
    from kdsearch.report.plots import plot_pareto

    rows = leaderboard_rows(study)
    if not rows:
        raise SearchError("the search finished with no complete trial; see the run log")
    score = f"score_{config.proxy}"
    unique = {r["arch"]: r for r in rows}
    feasible = [r for r in unique.values() if r["feasible"]]
    from kdsearch.search.race import is_degenerate

    # zero-cost scores filter: a candidate with no gradient path cannot win while another can
    feasible = [r for r in feasible if not is_degenerate(r)] or feasible
    if not feasible:
        raise BudgetError("no searched candidate met the budget; raise the budget or search longer (--trials)")
    timed: list[dict[str, Any]] = []
    replaced: list[str] = []
    if speed is not None and (config.speedup is not None or config.max_latency_ms is not None):
        feasible, timed, replaced = _confirm_speed(feasible, rows, score, config, speed, space, shape, note)
    picked = pick_winner(feasible, score, config.pick, cost="params")
    reason = explain_winner(picked, feasible, score, config.pick, cost="params", budgets={
        "params": config.max_params, "flops": config.max_flops, "latency": config.max_latency_ms,
        "speedup": config.speedup})
    winner = Arch.from_json(picked["arch"])
    ranked = rank_leaderboard(rows, picked, score, config.pick)
    write_text(out_dir / LEADERBOARD, _to_csv(ranked))
    WinnerRecord(
        arch=winner.to_dict(),
        rule=config.pick,
        reason=reason,
        proxy=config.proxy,
        score=picked[score],
        params=picked["params"],
        flops=picked["flops"],
        latency_ms=picked["latency_ms"],
        trial=picked["trial"],
        complete_trials=len(rows),
        unique_candidates=len(unique),
        feasible_candidates=len(feasible),
        config={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        speedup={str(b): picked[f"speedup_b{b}"] for b in config.latency_batches} if "speedup_b1" in picked else None,
    ).save(out_dir / WinnerRecord.FILE)
    if speed is not None:
        SpeedRecord(provider=config.latency_provider, threads=config.latency_threads,
                    batches=list(config.latency_batches), teacher_ms={str(b): v for b, v in speed.teacher_ms.items()},
                    speedup_budget=config.speedup, timed=[_timed_entry(r, score, config) for r in timed],
                    replaced=replaced, table=speed.table_paths()).save(out_dir / SpeedRecord.FILE)
    plot_pareto(list(unique.values()), picked, score, out_dir / PARETO_PLOT)
    winner_row = {**picked, "rule": config.pick, "reason": reason}
    return SearchResult(winner, winner_row, ranked, len(feasible))


def _confirm_speed(feasible, rows, score, config, speed, space, shape, note):
    """Time the rule's leading candidates (and a race's finalists) for real; drop those that miss.

    Returns the feasible rows left, every timed row, and the lines about passed-over leaders.
    The timed figures are written into ``rows`` (the leaderboard), and a row that missed the
    budget when timed is no longer feasible there.
    """
    from kdsearch.search.race import pick_finalists
    from kdsearch.search.speed import confirm_fastest, passed_over, time_candidates

    where = {"num_classes": shape.num_classes, "in_channels": shape.in_channels, "image_size": shape.image_size}
    ranked = rank_by_rule(feasible, score, config.pick)
    timed, replaced = confirm_fastest(ranked, space, speed, config, **where, note=note)
    for _ in range(8):  # a race: every finalist is timed too, and one that misses is replaced by the next
        by_arch = {r["arch"]: r for r in timed}
        feasible = [r for r in feasible if by_arch.get(r["arch"], {}).get("meets_budget", True)]
        untimed = [r for r in pick_finalists(feasible, config, config.race) if r["arch"] not in by_arch]
        if not config.race or not untimed:
            break
        more = time_candidates(untimed, space, speed, config, **where, note=note)
        timed += more
        replaced += [passed_over(r, config) for r in more if not r["meets_budget"]]
    measured = {r["arch"]: r for r in timed}
    for row in rows:
        m = measured.get(row["arch"])
        if m is not None:
            row.update({k: m[k] for k in m if k.startswith(("ms_b", "speedup_b"))})
            row["feasible"] = row["feasible"] and m["meets_budget"]
    feasible = [{**r, **{k: v for k, v in measured[r["arch"]].items() if k.startswith(("ms_b", "speedup_b"))}}
                if r["arch"] in measured else r for r in feasible]
    return feasible, timed, replaced


def _timed_entry(row: dict[str, Any], score: str, config: SearchConfig) -> dict[str, Any]:
    """What search/speed.json keeps of a candidate timed for real."""
    batches = config.latency_batches
    return {"arch": json.loads(row["arch"]), "arch_key": row["arch"], "trial": row["trial"], "params": row["params"],
            "flops": row["flops"], "score": row[score],
            "predicted_ms": {str(b): row.get(f"pred_ms_b{b}") for b in batches},
            "ms": {str(b): row[f"ms_b{b}"] for b in batches},
            "speedup": {str(b): row[f"speedup_b{b}"] for b in batches},
            "meets_budget": row["meets_budget"]}


def record_race(out_dir: Path, race: RaceRecord | Mapping[str, Any]) -> WinnerRecord:
    """Add the race's columns to ``leaderboard.csv`` (its winner's rows on top) and record the race
    and its winner in ``winner.json``; ``race`` is :meth:`kdsearch.search.race.RaceResult.record`
    (a mapping is loaded strictly as a :class:`~kdsearch.rundir.RaceRecord`)."""
    from kdsearch.rundir import read_leaderboard
    from kdsearch.search.race import training_loss_sum

    if not isinstance(race, RaceRecord):
        race = RaceRecord.from_dict(race, "the race's record")
    rows = read_leaderboard(out_dir / LEADERBOARD)
    by_arch = {f["arch"]: f for f in race.finalists}
    for row in rows:
        f = by_arch.get(row["arch"])
        row["race_finalist"] = f["finalist"] if f else None
        row["race_rung"] = f["rung_reached"] if f else None
        for k in range(len(race.rungs)):
            rungs = f["rungs"] if f else []
            row[f"race_val_acc_{k}"] = rungs[k]["val_acc"] if k < len(rungs) else None
            row[f"race_tse_{k}"] = training_loss_sum(rungs[: k + 1]) if k < len(rungs) else None
    won = race.won
    rows.sort(key=lambda r: r["arch"] != won["arch"])  # stable: the first row is the winner
    write_text(out_dir / LEADERBOARD, _to_csv(rows))
    previous = WinnerRecord.load(out_dir / WinnerRecord.FILE)
    row = rows[0]
    acc = won["rungs"][-1]["val_acc"]
    tse = training_loss_sum(won["rungs"])
    reason = (f"won the race of {len(race.finalists)} finalists chosen by --pick {previous.rule}, ranked by "
              f"{RACE_RANKS[race.rank]}: training-loss sum {tse:.4g}, val top-1 {acc:.4f} after {race.rungs[-1]} "
              f"steps; "
              f"the race cost {race.spent_distillations:.2f} distillations")
    score = f"score_{previous.proxy}"
    fields = {} if row["arch"] == json_dumps(previous.arch) else {
        "arch": Arch.from_json(row["arch"]).to_dict(), "score": row[score], "params": row["params"],
        "flops": row["flops"], "latency_ms": row.get("latency_ms"), "trial": row["trial"]}
    record = replace(previous, **fields, reason=reason, race=race.to_dict())
    record.save(out_dir / WinnerRecord.FILE)
    return record


def _to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
