"""``gpucheck.json`` and ``gpucheck.md``: the results assembled from the workers' records.

JSON (``schema`` = "rbfkern.gpucheck/1"), top-level keys:

* ``schema``, ``date`` (UTC, ISO 8601, the start), ``mode`` ("cuda" | "rehearse"), ``profile``
  ("quick" | "default" | "full"), ``command``, ``budget_s``, ``wall_s``;
* ``exit_code`` (0, or 1 when a test failed or a fused op raised / crashed) and ``exit_reasons``;
* ``env``: device, capability, sm_count, memory_gib, driver, nvidia_smi, torch, torch_cuda, cudnn,
  triton, python, cext, bcos ("not installed" or its version), tf32_defaults, variables, ...;
* ``tests``: status ("passed" | "failed" | "error" | "timeout" | "no tests" | "skipped"), selection,
  command, rc, wall_s, counts {total, passed, failed, errors, skipped}, failures [{nodeid, kind,
  message, detail}], slowest [{nodeid, s}], reason;
* ``warmup``: wall_s, jobs [{case, dtype, status, wall_s, error | reason}];
* ``peaks``: {bf16_matmul | fp32_matmul | fp32_matmul_tf32: {what, median_ms, p20_ms, p80_ms,
  samples, timer, tflops}, copy: {..., gbps}} (or an "error" per entry);
* ``timer``: do_bench's warmup_ms / rep_ms (or the host timer's cpu_rep_ms);
* ``cases``: one entry per (case, dtype, mode): id ("family/case/dtype/mode"), family, case, title,
  params, dtype, mode, flops, bytes (model.py), status, fused (a row), peers {provider key: row},
  ratios {provider key: provider median / fused median; > 1: the fused op is faster}, best_peer,
  best_peer_ratio. A row: provider, label, role ("fused" | "ours" | "peer"), tf32, status ("ok" |
  "skipped" | "error" | "crashed" | "not run"), reason | error, median_ms, p20_ms, p80_ms, samples,
  timer, first_call_s, tflops, gbps, peak_flops_key, pct_peak_flops, pct_peak_bw, pct_roofline,
  peak_mem_mib, saved_for_backward_mib (fwd+bwd), note;
* ``skipped`` [{what, reason}] and ``errors`` [{what, error}]: everything that did not run or failed;
* ``models``: the FLOP and byte model of each family, in words (model.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from . import model
from .families import find_case

SCHEMA = "rbfkern.gpucheck/1"
_ROW_DROP = ("type", "t", "case", "dtype", "params", "flops", "bytes", "mode")


def _peaks(doc):
    p = doc.get("peaks") or {}
    return {k: v for k, v in p.items() if isinstance(v, dict)}


def _title(key):
    try:
        return find_case(key).title
    except KeyError:
        return key


def _order_key(e):
    from .families import FAMILY_NAMES, family

    fam = e["family"]
    keys = [c.key for c in family(fam).CASES] if fam in FAMILY_NAMES else []
    return (FAMILY_NAMES.index(fam) if fam in FAMILY_NAMES else 99, keys.index(e["case"]) if e["case"] in keys else 99,
            e["dtype"] != "float32", e["mode"] != "fwd")


def assemble(doc: dict) -> dict:
    """Fill ``cases``, ``skipped``, ``errors``, ``exit_code`` from the raw step results."""
    peaks = _peaks(doc)
    entries, order = {}, []
    skipped, errors = [], []

    def entry(fam, case, dtype, mode, params=None, flops=None, nbytes=None):
        eid = f"{case}/{dtype}/{mode}"
        if eid not in entries:
            entries[eid] = {"id": eid, "family": fam, "case": case, "title": _title(case), "params": params,
                            "dtype": dtype, "mode": mode, "flops": flops, "bytes": nbytes, "status": None,
                            "fused": None, "peers": {}, "ratios": {}, "best_peer": None, "best_peer_ratio": None}
            order.append(eid)
        e = entries[eid]
        if params is not None:
            e.update(params=params, flops=flops, bytes=nbytes)
        return e

    bench = doc.pop("bench", None) or {}
    doc["timer"] = bench.get("timer")
    doc["bench"] = {fam: {"wall_s": res["wall_s"], "problems": res["problems"]}
                    for fam, res in (bench.get("families") or {}).items()}
    for fam, res in (bench.get("families") or {}).items():
        for r in res["rows"]:
            e = entry(fam, r["case"], r["dtype"], r["mode"], r.get("params"), r.get("flops"), r.get("bytes"))
            row = {k: v for k, v in r.items() if k not in _ROW_DROP and not (k == "traceback" and r["status"] == "ok")}
            if row["status"] == "ok" and e["flops"] is not None:
                c = model.Cost(e["flops"], e["bytes"], "", "")
                row.update(model.rates(c, row["median_ms"], e["dtype"], row["tf32"], peaks))
            if row["role"] == "fused":
                e["fused"] = row
            else:
                e["peers"][row["provider"]] = row
        for pb in res["problems"]:
            for mode in ("fwd", "fwd+bwd"):
                e = entry(fam, pb["case"], pb["dtype"], mode)
                if pb["status"] != "crashed":  # skipped (budget) or error (the case's inputs could not be built)
                    if e["fused"] is None:
                        e["status"], e["reason"] = pb["status"], pb.get("reason") or pb.get("error")
                    continue
                culprit = pb.get("provider") if pb.get("mode") == mode else None
                if culprit and culprit not in e["peers"] and (e["fused"] or {}).get("provider") != culprit:
                    row = {"provider": culprit, "role": pb.get("role") or "?", "status": "crashed", "error": pb["error"]}
                    if row["role"] == "fused":
                        e["fused"] = row
                    else:
                        e["peers"][culprit] = row
                if e["fused"] is None:  # not reached; a crash before any measurement counts against the case
                    e["fused"] = {"provider": "fused", "role": "fused", "status": "not run" if pb.get("provider") else
                                  "crashed", "reason": f"the worker crashed in this unit: {pb['error']}",
                                  "error": None if pb.get("provider") else pb["error"]}

    cases = []
    for eid in sorted(order, key=lambda i: _order_key(entries[i])):
        e = entries[eid]
        f = e["fused"]
        if f is not None:
            e["status"] = f["status"]
        fm = f["median_ms"] if f and f["status"] == "ok" else None
        best = None
        for k, p in e["peers"].items():
            if p["status"] == "ok" and fm:
                e["ratios"][k] = p["median_ms"] / fm
                if p["role"] == "peer" and (best is None or p["median_ms"] < e["peers"][best]["median_ms"]):
                    best = k
        if best:
            e["best_peer"], e["best_peer_ratio"] = best, e["ratios"][best]
        for r in ([f] if f else []) + list(e["peers"].values()):
            what = f"{eid} {r['provider']}"
            if r["status"] in ("skipped", "not run"):
                skipped.append({"what": what, "reason": r.get("reason")})
            elif r["status"] in ("error", "crashed"):
                errors.append({"what": what, "error": r.get("error")})
        if f is None:
            (errors if e["status"] in ("error", "crashed") else skipped).append(
                {"what": eid, ("error" if e["status"] in ("error", "crashed") else "reason"): e.get("reason")})
        cases.append(e)
    doc["cases"] = cases

    for w in (doc.get("warmup") or {}).get("jobs", []):
        what = f"warm-up {w['case']}/{w['dtype']}"
        if w["status"] in ("skipped", "not run"):
            skipped.append({"what": what, "reason": w.get("reason")})
        elif w["status"] != "ok":
            errors.append({"what": what, "error": w.get("error")})
    t = doc.get("tests") or {}
    if t.get("status") in ("skipped", "timeout", "no tests"):
        skipped.append({"what": f"tests ({t.get('selection')})", "reason": t.get("reason")})
    if t.get("junit_error"):
        errors.append({"what": "tests", "error": t["junit_error"]})
    for k, v in (doc.get("peaks") or {}).items():
        if isinstance(v, dict) and v.get("error"):
            errors.append({"what": f"peak {k}", "error": v["error"]})
        elif not isinstance(v, dict):
            (skipped if k == "skipped" else errors).append({"what": "peaks", ("reason" if k == "skipped" else "error"): v})
    doc["skipped"], doc["errors"] = skipped, errors
    doc["models"] = model.describe()

    reasons = []
    if doc.get("harness_error"):
        reasons.append("the run stopped early: " + doc["harness_error"].splitlines()[0][:200])
        errors.append({"what": "harness", "error": doc["harness_error"]})
    c = t.get("counts") or {}
    if t.get("status") in ("failed", "error") or c.get("failed") or c.get("errors"):
        reasons.append(f"tests {t.get('status')}: {c.get('failed', 0)} failed, {c.get('errors', 0)} errors"
                       + (f" ({t['reason']})" if t.get("reason") and t.get("status") == "error" else ""))
    bad = [e["id"] for e in cases for r in [e["fused"], *e["peers"].values()]
           if r and r.get("role") in ("fused", "ours") and r["status"] in ("error", "crashed")]
    if bad:
        reasons.append(f"fused op failed in {len(bad)} benchmark steps (first: {bad[0]})")
    unset = [e["id"] for e in cases if e["fused"] is None and e["status"] == "error"]
    if unset:
        reasons.append(f"{len(unset)} benchmark steps could not be set up (first: {unset[0]}: "
                       f"{(entries[unset[0]].get('reason') or '')[:200]})")
    doc["exit_reasons"] = reasons
    doc["exit_code"] = 1 if reasons else 0
    return doc


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------


def _ms(v):
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _x(v):
    return "-" if v is None else f"{v:.2f}x"


def _pct(v):
    return "-" if v is None else f"{v:.0f}%"


def _num(v, fmt="{:.3g}"):
    return "-" if v is None else fmt.format(v)


def _short(case):
    return case.split("/", 1)[1] if "/" in case else case


def headline(doc) -> list[str]:
    lines = ["| case | dtype | mode | fused ms [p20, p80] | best peer | best peer ms | best peer / fused | "
             "naive / fused | fused TFLOP/s (% peak) | fused GB/s (% BW) |", "|" + "---|" * 10]
    for e in doc["cases"]:
        f = e["fused"] or {}
        if f.get("status") == "ok":
            fused = f"{_ms(f['median_ms'])} [{_ms(f['p20_ms'])}, {_ms(f['p80_ms'])}]"
        else:
            fused = (f.get("status") or e.get("status") or "-").upper()
        bp = e["best_peer"]
        naive = e["ratios"].get("naive")
        lines.append(f"| {_short(e['case'])} | {e['dtype']} | {e['mode']} | {fused} | {bp or '-'} | "
                     f"{_ms(e['peers'][bp]['median_ms']) if bp else '-'} | {_x(e['best_peer_ratio'])} | {_x(naive)} | "
                     f"{_num(f.get('tflops'))} ({_pct(f.get('pct_peak_flops'))}) | {_num(f.get('gbps'))} "
                     f"({_pct(f.get('pct_peak_bw'))}) |")
    return lines


def _family_table(doc, fam) -> list[str]:
    lines = ["| case | dtype | mode | provider | ms [p20, p80] | x fused | TFLOP/s | % peak | GB/s | % BW | "
             "% roofline | saved MiB | peak MiB | status |", "|" + "---|" * 14]
    for e in doc["cases"]:
        if e["family"] != fam:
            continue
        rows = ([e["fused"]] if e["fused"] else []) + list(e["peers"].values())
        for r in rows:
            ok = r["status"] == "ok"
            t = f"{_ms(r['median_ms'])} [{_ms(r['p20_ms'])}, {_ms(r['p80_ms'])}]" if ok else "-"
            status = "ok" if ok else f"{r['status']}: {(r.get('reason') or r.get('error') or '')[:120]}"
            ratio = "1.00x" if r["role"] == "fused" and ok else _x(e["ratios"].get(r["provider"]))
            lines.append(f"| {_short(e['case'])} | {e['dtype']} | {e['mode']} | {r['provider']} | {t} | {ratio} | "
                         f"{_num(r.get('tflops'))} | {_pct(r.get('pct_peak_flops'))} | "
                         f"{_num(r.get('gbps'))} | {_pct(r.get('pct_peak_bw'))} | {_pct(r.get('pct_roofline'))} | "
                         f"{_num(r.get('saved_for_backward_mib'))} | {_num(r.get('peak_mem_mib'))} | "
                         f"{status.replace('|', '/')} |")
        if not rows:
            lines.append(f"| {_short(e['case'])} | {e['dtype']} | {e['mode']} | - | - | - | - | - | - | - | - | - | - | "
                         f"{e['status']}: {(e.get('reason') or '')[:120]} |")
    return lines


def _saved_table(doc) -> list[str]:
    lines = ["| case | dtype | ours (fused) MiB | official MiB | plain conv / linear MiB |", "|---|---|---|---|---|"]
    n = 0
    for e in doc["cases"]:
        if e["family"] != "bcos" or e["mode"] != "fwd+bwd":
            continue
        def saved(r):
            return _num((r or {}).get("saved_for_backward_mib"))
        peers = e["peers"]
        off = peers.get("official_tf32_off") or peers.get("official")
        plain = next((peers[k] for k in ("plain_conv_tf32_off", "plain_conv", "linear_tf32_off", "linear")
                      if k in peers), None)
        lines.append(f"| {_short(e['case'])} | {e['dtype']} | {saved(e['fused'])} | {saved(off)} | {saved(plain)} |")
        n += 1
    return lines if n else []


def markdown(doc) -> str:
    env, t = doc.get("env") or {}, doc.get("tests") or {}
    out = [f"# rbfkern gpucheck: {env.get('device')}, {doc['date']}", "",
           f"- command: `{doc['command']}` (mode {doc['mode']}, profile {doc['profile']}, budget {doc['budget_s']:.0f} s, "
           f"wall {doc.get('wall_s', 0):.0f} s)",
           f"- exit code {doc['exit_code']}" + (": " + "; ".join(doc["exit_reasons"]) if doc["exit_reasons"] else ""),
           f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}), triton {env.get('triton')}, "
           f"python {env.get('python')}, driver {env.get('driver') or '-'}",
           (f"- device: {env.get('device')} {env.get('capability')}, {env.get('sm_count')} SMs, {env.get('memory_gib')} GiB; "
            f"nvidia-smi: {env.get('nvidia_smi')}" if env.get("capability") else
            "- rehearsal on CPU: tiny shapes (the case names are the device shapes), a host timer, the C++ kernels; "
            "the rates are not device numbers"),
           f"- rbfkern {env.get('rbfkern')} at {env.get('rbfkern_path')} (git {env.get('git_commit') or 'unknown'}), C++ extension "
           f"{'built' if env.get('cext') else 'MISSING'}, official bcos: {env.get('bcos')}",
           f"- timer: {doc.get('timer')}", "", "## Tests", ""]
    c = t.get("counts") or {}
    out.append(f"**{t.get('status')}**: {c.get('passed', 0)} passed, {c.get('failed', 0)} failed, {c.get('errors', 0)} "
               f"errors, {c.get('skipped', 0)} skipped of {c.get('total', 0)} ({t.get('wall_s', 0) or 0:.0f} s; selection "
               f"`{t.get('selection')}`)" + (f"; {t['reason']}" if t.get("reason") else ""))
    if t.get("failures"):
        out += ["", "| node id | kind | message |", "|---|---|---|"]
        out += [f"| `{f['nodeid']}` | {f['kind']} | {f['message'][:300].replace('|', '/')} |" for f in t["failures"]]
    if t.get("slowest"):
        out += ["", "Slowest: " + ", ".join(f"`{s['nodeid']}` {s['s']:.1f} s" for s in t["slowest"][:5])]
    out += ["", "## Measured peaks", "", "| peak | what | median ms [p20, p80] | rate |", "|---|---|---|---|"]
    for k, v in _peaks(doc).items():
        if "error" in v:
            out.append(f"| {k} | {v.get('what')} | - | ERROR {v['error'][:200]} |")
        else:
            rate = f"{v['tflops']:.1f} TFLOP/s" if "tflops" in v else f"{v['gbps']:.0f} GB/s"
            out.append(f"| {k} | {v['what']} | {_ms(v['median_ms'])} [{_ms(v['p20_ms'])}, {_ms(v['p80_ms'])}] | {rate} |")
    out += ["", "## Headline (fused vs the fastest peer)", "", *headline(doc)]
    for fam in dict.fromkeys(e["family"] for e in doc["cases"]):
        out += ["", f"## {fam}: every provider", "", *_family_table(doc, fam)]
    saved = _saved_table(doc)
    if saved:
        out += ["", "## B-cos: saved for backward (storages beyond the leaves, torch.autograd.graph.saved_tensors_hooks)",
                "", *saved]
    out += ["", f"## Skipped ({len(doc['skipped'])})", ""]
    out += [f"- {s['what']}: {s.get('reason')}" for s in doc["skipped"]] or ["- nothing"]
    out += ["", f"## Errors ({len(doc['errors'])})", ""]
    out += [f"- {s['what']}: {(s.get('error') or '')[:400]}" for s in doc["errors"]] or ["- none"]
    w = doc.get("warmup") or {}
    st = {}
    for j in w.get("jobs", []):
        st[j["status"]] = st.get(j["status"], 0) + 1
    out += ["", "## Warm-up", "", f"{len(w.get('jobs', []))} units in {w.get('wall_s', 0):.0f} s: "
            + ", ".join(f"{n} {s}" for s, n in st.items())]
    slow = sorted((j for j in w.get("jobs", []) if j.get("wall_s")), key=lambda j: -j["wall_s"])[:5]
    if slow:
        out.append("Slowest: " + ", ".join(f"{_short(j['case'])} {j['dtype']} {j['wall_s']:.0f} s" for j in slow))
    m = doc["models"]
    out += ["", "## FLOP and byte models (rbfkern/gpucheck/model.py)", "", m["conventions"], ""]
    for fam in ("rbf", "bcos", "gauss_deriv"):
        for item in m[fam]:
            out.append(f"- {fam}: FLOPs {item['flops']}; bytes {item['bytes']}")
    return "\n".join(out) + "\n"


def summary_text(doc) -> str:
    """What the run prints last (the end of a device command's output is what comes back)."""
    t = doc.get("tests") or {}
    c = t.get("counts") or {}
    env = doc.get("env") or {}
    lines = [f"gpucheck {doc['mode']} {doc['profile']}: {env.get('device')}; torch {env.get('torch')}, triton {env.get('triton')}, "
             f"CUDA {env.get('torch_cuda')}; {doc.get('wall_s', 0):.0f} s of {doc['budget_s']:.0f}",
             f"tests {t.get('status')}: {c.get('passed', 0)} passed, {c.get('failed', 0)} failed, {c.get('errors', 0)} "
             f"errors, {c.get('skipped', 0)} skipped"]
    lines += [f"  FAILED {f['nodeid']}: {f['message'][:150]}" for f in (t.get("failures") or [])[:15]]
    pk = _peaks(doc)
    if pk:
        lines.append("peaks: " + ", ".join(
            f"{k} {v['tflops']:.0f} TFLOP/s" if "tflops" in v else f"{k} {v['gbps']:.0f} GB/s" if "gbps" in v
            else f"{k} ERROR" for k, v in pk.items()))
    else:
        lines.append(f"peaks: {doc.get('peaks')}")
    lines += headline(doc)
    lines.append(f"skipped {len(doc['skipped'])}, errors {len(doc['errors'])} (see gpucheck.md); exit {doc['exit_code']}"
                 + (": " + "; ".join(doc["exit_reasons"]) if doc["exit_reasons"] else ""))
    return "\n".join(lines)


def write(doc: dict, out: Path):
    out = Path(out)
    (out / "gpucheck.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "gpucheck.md").write_text(markdown(doc))
