"""``kdsearch report`` (the HTML page of a run) and ``kdsearch doctor`` (is this machine ready)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from kdsearch.cli import _options as o
from kdsearch.cli._console import console, err_console, print_json

__all__ = ["register", "report", "doctor"]



def _report_tables(figures: dict[str, Any]) -> list[Table]:
    from kdsearch.ratios import points_text, speed_text
    from kdsearch.report.tables import fmt_int, fmt_ms, fmt_pct

    t, s = figures["teacher"], figures["student"]
    main = Table(title="teacher against student")
    for col in ("", "teacher", "student", "student vs teacher"):
        main.add_column(col, justify="left" if not col else "right")
    main.add_row("val top-1", fmt_pct(t["val_acc"]), fmt_pct(s["val_acc"]),
                 points_text(s["val_acc"], t["val_acc"]) if s["val_acc"] is not None and t["val_acc"] is not None else "")
    main.add_row("params", fmt_int(t["params"]), fmt_int(s["params"]), "")
    main.add_row("FLOPs", fmt_int(t["flops"]), fmt_int(s["flops"]), "")
    if figures["qat"]:
        main.add_row("val top-1 after QAT (int8)", "", fmt_pct(figures["qat"]["int8_val_acc"]), "")
    exported = figures["export"] or {}
    shipped_kind = next((kind for kind, f in exported.items() if f["recommended"]), None)
    batches = list(dict.fromkeys((1, figures["latency_batch"] or 32)))
    if shipped_kind:
        shipped = exported[shipped_kind]
        for batch in batches:
            main.add_row(f"ONNX Runtime p50 b={batch} ({shipped_kind}, {shipped['path']})",
                         fmt_ms(t.get(f"onnx_latency_ms_b{batch}")), fmt_ms(shipped[f"latency_ms_b{batch}"]),
                         speed_text(shipped[f"speedup_b{batch}"]))
    tables = [main]
    if exported:
        deploy = Table(title="deployment (ONNX Runtime; ★ the file to ship)")
        int8 = any(kind != "fp32" for kind in exported)
        columns = ["file", "val top-1", "agreement", *(f"p50 b={b}" for b in batches),
                   *(f"vs teacher b={b}" for b in batches), *(f"vs fp32 b={b}" for b in batches if int8), "size",
                   "provider"]
        for col in columns:
            deploy.add_column(col, justify="left" if col == "file" else "right")
        for kind, f in exported.items():
            deploy.add_row(("★ " if f["recommended"] else "") + f"{kind}: {f['path']}", fmt_pct(f["accuracy"]),
                           fmt_pct(f["top1_agreement"]), *(fmt_ms(f[f"latency_ms_b{b}"]) for b in batches),
                           *(speed_text(f[f"speedup_b{b}"]) for b in batches),
                           *((speed_text(f[f"speedup_vs_fp32_b{b}"]) if kind != "fp32" else "") for b in batches
                             if int8),
                           fmt_int(f["size_bytes"]) + "B", str(f["provider"] or ""))
        tables.append(deploy)
    return tables


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (the --out of `kdsearch run`).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the page (default RUN_DIR/report.html).",
                                                 rich_help_panel=o.OUT)] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="Accepted and checked as in every command; the page itself describes RUN_DIR as its run.yaml recorded it.", rich_help_panel=o.RUN)] = None,
    json_out: o.Json = False,
) -> None:
    """Write RUN_DIR/report.html (one self-contained page) and summarise the run.

    Example: kdsearch report runs/quick
    """
    from kdsearch.report.html import write_report

    if config_file is not None:  # a project-wide config file works with every command; a broken one is an error
        from kdsearch.cli._common import base_config

        base_config(config_file)  # checking its losses imports torch: only when there is a file to check

    result = write_report(run_dir, out)
    for line in result["speed_warnings"]:  # int8 slower than fp32, or the student slower than its teacher
        err_console.print(f"warning: {line}", highlight=False, soft_wrap=True, markup=False)
    if json_out:
        print_json(result)
        return
    for table in _report_tables(result):
        console.print(table)
    console.print(f"stages: {', '.join(result['stages']) or 'none'}")
    console.print(f"report: [bold]{result['report']}[/]", highlight=False)


def _doctor_tables(d: dict[str, Any]) -> list[Table]:
    versions = Table(title=f"kdsearch doctor: Python {d['python']} on {d['platform']}")
    versions.add_column("piece")
    versions.add_column("state")
    for dist, version in d["versions"].items():
        if dist in ("onnxruntime", "onnxruntime-gpu") and version is None:
            continue
        versions.add_row(dist, version or "[red]not installed[/]")
    versions.add_row("onnxruntime provided by", ", ".join(d["onnxruntime_dists"]) or "[red]nothing[/]")
    versions.add_row("ONNX Runtime providers", ", ".join(d["ort_providers"]) or "–")
    gpus = ", ".join(f"cuda:{g['index']} {g['name']} ({g['memory_gib']} GiB)" for g in d["cuda"])
    versions.add_row("CUDA devices", gpus or "none (CPU only)")
    for name, where in d["datasets"].items():
        versions.add_row(f"dataset {name}", where or "[yellow]not found[/]")
    versions.add_row("PostgreSQL driver (psycopg2)", "yes" if d["postgres_driver"] else "[yellow]no[/]")
    versions.add_row("optuna-dashboard", d["optuna_dashboard"] or "[yellow]not installed[/]")
    tables = [versions]
    if d["problems"]:
        problems = Table(title="problems")
        problems.add_column("")
        problems.add_column("what")
        problems.add_column("fix")
        for p in d["problems"]:
            problems.add_row("[red]required[/]" if p["required"] else "[yellow]optional[/]", p["what"], p["fix"])
        tables.append(problems)
    return tables


def doctor(
    data_dir: o.DataDir = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="Take the dataset directory (data.data_dir) from this config file.", rich_help_panel=o.RUN)] = None,
    json_out: o.Json = False,
) -> None:
    """Check this machine: versions, GPUs, ONNX Runtime, datasets; each problem with its fix.

    Exits 1 when a required piece is broken.

    Example: kdsearch doctor --json
    """
    from kdsearch.cli._common import base_config
    from kdsearch.doctor import diagnose

    configured = base_config(config_file).data.data_dir
    result = diagnose(data_dir or (Path(configured) if configured else None))
    d = result.to_dict()
    if json_out:
        print_json(d)
    else:
        for table in _doctor_tables(d):
            console.print(table)
        if result.healthy:
            console.print("[green]healthy[/]")
    if not result.healthy:
        from kdsearch.errors import KdsearchError

        broken = [p for p in result.problems if p.required]
        raise KdsearchError(f"{len(broken)} required piece(s) broken; first fix: {broken[0].fix}")


def register(app: typer.Typer) -> None:
    app.command("report", rich_help_panel="Information")(report)
    app.command("doctor", rich_help_panel="Information")(doctor)
