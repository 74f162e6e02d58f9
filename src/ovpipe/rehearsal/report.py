"""What a rehearsal run showed, from its manifests: every step's counts, every training stage's loss, export
check and per-rank memory and step time; the checks that fail the rehearsal; saved as {run}/rehearsal.json."""
from __future__ import annotations

from ovpipe import steps, storage
from ovpipe.sharded import Context

# the rehearsal's corpora are given as inputs: no synth step
CURATION_AND_PACKING = steps.folders(s.name for s in steps.TABLE
                                     if s.family in ("curation", "packing") and s.name != "synth")


class RehearsalFailed(RuntimeError):
    pass


def _manifest(ctx: Context, step: str, problems: list[str]) -> dict | None:
    uri = ctx.uri(step, "manifest.json")
    if storage.exists(uri):
        return storage.read_json(uri)
    problems.append(f"{step}: no manifest ({uri})")
    return None


def build(ctx: Context, seconds: float) -> dict:
    out: dict = {"run": storage.join(ctx.store, ctx.run_id), "recipe": ctx.recipe.name, "seconds": round(seconds, 1),
                 "tensor_parallel": ctx.recipe.train.tensor_parallel, "steps": {}, "stages": {}, "problems": []}
    problems = out["problems"]
    for step in CURATION_AND_PACKING:
        if (body := _manifest(ctx, step, problems)) is None:
            continue
        c = body["counts"]
        out["steps"][step] = {"in": c["in"], "out": c["out"], "rejected": c["rejected"]}
        if c["out"] == 0:
            problems.append(f"{step}: nothing came out ({c['in']} in)")
    for stage in steps.STAGES:
        if (body := _manifest(ctx, stage, problems)) is None:
            continue
        m = body["metrics"]
        out["stages"][stage] = {k: m.get(k) for k in ("loss_first", "loss_last", "steps", "tokens_per_second",
                                                      "export_check", "ranks")}
        if not m["loss_last"] < m["loss_first"]:
            problems.append(f"{stage}: loss did not fall ({m['loss_first']:.4f} -> {m['loss_last']:.4f})")
        check = m.get("export_check") or {}
        if not check.get("max_abs_diff", float("inf")) <= check.get("tolerance", 0):
            problems.append(f"{stage}: the export does not reproduce the model's losses ({check})")
    if (body := _manifest(ctx, "eval", problems)) is not None:
        out["eval"] = {"evaluated": body["evaluated"]["uri"],
                       "scores": {t: s.get("score") for t, s in body["metrics"].items()}}
    return out


def text(report: dict) -> str:
    lines = [f"rehearsal {report['run']} ({report['recipe']}, TP {report['tensor_parallel']}): "
             f"{report['seconds']:.0f} s"]
    for step, c in report["steps"].items():
        lines.append(f"  {step:15s} in={c['in']:<6d} out={c['out']:<6d} rejected={c['rejected']}")
    for stage, s in report["stages"].items():
        check = s.get("export_check") or {}
        lines.append(f"  {stage:15s} loss {s['loss_first']:.4f} -> {s['loss_last']:.4f} in {s['steps']} steps; "
                     f"export vs model: max |d loss| {check.get('max_abs_diff', float('nan')):.2e} "
                     f"over {check.get('tokens', 0)} tokens")
        for r in s.get("ranks") or []:
            step = "no step run here" if r["step_seconds"] is None else f"{r['step_seconds']:.2f} s/step"
            lines.append(f"  {'':15s} rank {r['rank']} (tp {r['tp_rank']}, dp {r['dp_rank']}): peak "
                         f"{r['peak_memory_gib']:.2f} GiB ({r['memory']}), {step}")
    if "eval" in report:
        scores = ", ".join(f"{t} {v:.2f}" for t, v in report["eval"]["scores"].items() if isinstance(v, float))
        lines.append(f"  {'eval':15s} {report['eval']['evaluated']}: {scores}")
    lines += [f"  PROBLEM: {p}" for p in report["problems"]]
    return "\n".join(lines)


def write(ctx: Context, seconds: float) -> dict:
    """Build, save and print the report; RehearsalFailed when a check did not hold."""
    report = build(ctx, seconds)
    storage.write_json(ctx.uri("rehearsal.json"), report)
    print(text(report))
    if report["problems"]:
        raise RehearsalFailed(f"rehearsal: {len(report['problems'])} check(s) failed (see above; "
                              f"{ctx.uri('rehearsal.json')})")
    return report
