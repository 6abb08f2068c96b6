"""The results as a markdown table, the targets checked, and the latency plot."""

from __future__ import annotations

import math
from importlib import metadata
from pathlib import Path
from typing import Any

SDK_LOCK = "coordination lock"
SDK_WATCH = "coordination config.watch()"
BACKEND_TITLES = {"zookeeper": "ZooKeeper", "etcd": "etcd", "consul": "Consul"}


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in ("coordination", "aiozk", "aetcd", "grpcio", "py-consul", "kazoo", "tooz", "etcd3gw"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


# -- reading results --------------------------------------------------------------------------


def _rounds(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in entry.get("rounds", []) if "error" not in r and r.get("n")]


def _best(entry: dict[str, Any], field: str, highest: bool = False) -> float:
    values = [r[field] for r in _rounds(entry) if field in r and not math.isnan(r[field])]
    if not values:
        return math.nan
    return max(values) if highest else min(values)


def _spread(entry: dict[str, Any], field: str) -> float:
    values = [r[field] for r in _rounds(entry) if field in r and not math.isnan(r[field])]
    if len(values) < 2 or not min(values):
        return math.nan
    return (max(values) - min(values)) / (max(values) if field == "ops_per_s" else min(values))


def _floor_name(data: dict[str, Any]) -> str | None:
    return next((n for n, e in data.get("uncontended", {}).items() if e.get("kind") == "floor"), None)


def _write_p50(data: dict[str, Any]) -> float:
    name = _floor_name(data)
    return _best(data["uncontended"][name], "p50_ms") if name else math.nan


# -- targets ----------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of issue 7 against this run's figures."""
    found: list[dict[str, Any]] = []

    def add(
        backend: str, target: str, figure: float, limit: float, text: str, met: bool | None = None
    ) -> None:
        ok = (figure <= limit) if met is None and not math.isnan(figure) else met
        found.append(
            {"backend": backend, "target": target, "figure": figure, "limit": limit, "met": ok, "text": text}
        )

    for backend, data in results["backends"].items():
        unc = data.get("uncontended", {})
        if SDK_LOCK in unc:
            sdk = unc[SDK_LOCK]
            raw = next((e for e in unc.values() if e.get("kind") == "raw"), None)
            if raw is not None:
                ratio = _best(raw, "ops_per_s", True) / _best(sdk, "ops_per_s", True)
                per_round = [
                    r["ops_per_s"] / s["ops_per_s"]
                    for r, s in zip(_rounds(raw), _rounds(sdk), strict=False)
                    if s["ops_per_s"]
                ]
                spread = f"; per round {min(per_round):.2f}-{max(per_round):.2f}x" if per_round else ""
                add(
                    backend,
                    "uncontended acquire+release <= 1.15x the hand-written recipe",
                    ratio,
                    1.15,
                    f"{ratio:.2f}x (best SDK {_best(sdk, 'ops_per_s', True):,.0f}/s vs best hand-written "
                    f"{_best(raw, 'ops_per_s', True):,.0f}/s{spread})",
                )
            sdk_ops = _best(sdk, "ops_per_s", True)
            for name, entry in unc.items():
                if entry.get("kind") != "peer" or "unavailable" in entry:
                    continue
                peer_ops = _best(entry, "ops_per_s", True)
                add(
                    backend,
                    f"no slower than {name} (uncontended)",
                    peer_ops / sdk_ops,
                    1.0,
                    f"SDK {sdk_ops:,.0f}/s vs {peer_ops:,.0f}/s ({sdk_ops / peer_ops:.2f}x its rate)",
                )
        write = _write_p50(data)
        for waiting, table in data.get("handover", {}).items():
            if SDK_LOCK not in table:
                continue
            p99 = _best(table[SDK_LOCK], "p99_ms")
            raw_entry = next((e for e in table.values() if e.get("kind") == "raw"), None)
            by_hand = (
                f"; the recipe by hand: p50 {_best(raw_entry, 'p50_ms'):.2f} / "
                f"p99 {_best(raw_entry, 'p99_ms'):.2f} ms"
                if raw_entry
                else ""
            )
            add(
                backend,
                f"hand-over p99 <= 3x one raw write ({waiting} waiting)",
                p99 / write,
                3.0,
                f"{p99 / write:.2f}x (SDK p50 {_best(table[SDK_LOCK], 'p50_ms'):.2f} / p99 {p99:.2f} ms, "
                f"best rounds, vs raw write p50 {write:.2f} ms{by_hand})",
            )
            if backend in ("zookeeper", "etcd"):
                wakes = [r.get("wakeups_per_release", math.nan) for r in _rounds(table[SDK_LOCK])]
                exact = bool(wakes) and all(w == 1.0 for w in wakes)
                add(
                    backend,
                    f"exactly one waiter woken per release ({waiting} waiting)",
                    max(wakes) if wakes else math.nan,
                    1.0,
                    "per round: " + ", ".join(f"{w:g}" for w in wakes),
                    met=exact,
                )
        failover = data.get("failover", {}).get(SDK_LOCK)
        if failover is not None:
            trials = failover["trials"]
            worst = max(trials) if trials else math.nan
            add(
                backend,
                f"crash failover <= {data['failover_bound_text']}",
                worst,
                failover["bound"],
                f"worst {worst:.2f} s of {len(trials)} ("
                + ", ".join(f"{t:.2f}" for t in trials)
                + ")"
                + (f"; errors: {failover['errors']}" if failover.get("errors") else ""),
                met=None if trials and not failover.get("errors") else False,
            )
        watch = data.get("watch", {}).get(SDK_WATCH)
        if watch is not None:
            p50 = _best(watch, "p50_ms")
            others = "; ".join(
                f"{name}: {_best(entry, 'p50_ms'):.2f} ms"
                for name, entry in data["watch"].items()
                if name != SDK_WATCH and "unavailable" not in entry
            )
            add(
                backend,
                "watch p50 <= 2x one raw write",
                p50 / write,
                2.0,
                f"{p50 / write:.2f}x (p50 {p50:.2f} ms vs raw write p50 {write:.2f} ms; {others})",
            )
    return found


# -- markdown ---------------------------------------------------------------------------------


def _fmt_ops(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    if "unavailable" in entry:
        return f"n/a: {entry['unavailable']}"
    ops = _best(entry, "ops_per_s", True)
    if math.isnan(ops):
        return _error(entry)
    spread = _spread(entry, "ops_per_s")
    return f"{ops:,.0f}" + ("" if math.isnan(spread) else f" [{spread:.0%}]")


def _fmt_lat(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    if "unavailable" in entry:
        return f"n/a: {entry['unavailable']}"
    p50, p99 = _best(entry, "p50_ms"), _best(entry, "p99_ms")
    if math.isnan(p50):
        return _error(entry)
    spread = _spread(entry, "p50_ms")
    return f"{_ms(p50)} / {_ms(p99)}" + ("" if math.isnan(spread) else f" [{spread:.0%}]")


def _error(entry: dict[str, Any]) -> str:
    errors = [r["error"] for r in entry.get("rounds", []) if "error" in r]
    return f"failed: {errors[0][:80]}" if errors else "—"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _fmt_wakes(handover: dict[str, Any], name: str) -> str:
    cells = []
    for table in handover.values():
        entry = table.get(name)
        if entry is None or "unavailable" in entry:
            cells.append("")
            continue
        wakes = [r["wakeups_per_release"] for r in _rounds(entry) if "wakeups_per_release" in r]
        if not wakes:
            cells.append("—")
        elif min(wakes) == max(wakes):
            cells.append(f"{wakes[0]:.3g}")
        else:
            cells.append(f"{min(wakes):.3g}-{max(wakes):.3g}")
    return " / ".join(cells)


def _fmt_failover(entry: dict[str, Any] | None) -> str:
    if not entry:
        return ""
    trials = entry.get("trials", [])
    if not trials:
        return "failed: " + "; ".join(entry.get("errors", []))[:80]
    return f"{min(trials):.2f}-{max(trials):.2f}" if len(trials) > 1 else f"{trials[0]:.2f}"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Benchmarks",
        "",
        f"`{meta['command']}` — {meta['started']}, {meta['minutes']} min; {meta['machine']}, Python "
        f"{meta['python']}; load average {meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} "
        f"after (the machine is shared). {meta['repeat']} interleaved rounds"
        + (" (quick run: short rounds, small scale)" if meta["quick"] else "")
        + ".",
        "",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
        "Servers: "
        + "; ".join(f"{BACKEND_TITLES[b]}: {d['server']}" for b, d in results["backends"].items())
        + ". Everything on loopback, each server on its own free ports.",
        "",
        "Each cell is the best round; `[x%]` is the spread of the rounds, (worst - best) / best. "
        "Latencies are milliseconds, p50 / p99. *Hand-over* is the time from a holder starting its "
        "release to the next holder running, with 8 or 64 other sessions waiting; *wake-ups* are the "
        "waiters that got control back per release (watch events delivered, blocking queries "
        "answered, polls answered), 8 / 64 waiting. *Crash failover* SIGKILLs the holder's process "
        "(TTL 2 s; Consul lock-delay 1 s) and times until a waiter in another process holds the lock: "
        "min-max of the trials.",
        "",
        "| backend | implementation | acquire+release /s | acquire+release p50 / p99 | hand-over, 8 waiting "
        "| hand-over, 64 waiting | wake-ups per release | crash failover, s |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for backend, data in results["backends"].items():
        unc, handover = data.get("uncontended", {}), data.get("handover", {})
        failover = data.get("failover", {})
        names = sorted(
            list(unc) or list(next(iter(handover.values()), {})),
            key=lambda n: ("unavailable" in unc.get(n, {})) + 2 * (unc.get(n, {}).get("kind") == "floor"),
        )
        title = BACKEND_TITLES[backend]
        for i, name in enumerate(names):
            entry = unc.get(name)
            kind = (entry or {}).get("kind", "")
            first = title if i == 0 else ""
            if kind == "floor":
                lines.append(f"| {first} | *{name}* | {_fmt_ops(entry)} | {_fmt_lat(entry)} | | | | |")
                continue
            shown = f"**{name}**" if kind == "sdk" else name
            if entry is not None and "unavailable" in entry:
                lines.append(f"| {first} | {shown} | n/a: {entry['unavailable']} | | | | | |")
                continue
            h8 = handover.get("8", {}).get(name)
            h64 = handover.get("64", {}).get(name)
            lines.append(
                f"| {first} | {shown} | {_fmt_ops(entry)} | {_fmt_lat(entry)} | "
                f"{_fmt_lat(h8)} | {_fmt_lat(h64)} | {_fmt_wakes(handover, name)} | "
                f"{_fmt_failover(failover.get(name))} |"
            )
    lines += [
        "",
        "Watch: a write in one session until the event (and the new value) in another, p50 / p99 ms.",
        "",
        "| backend | implementation | watch p50 / p99 |",
        "|---|---|--:|",
    ]
    for backend, data in results["backends"].items():
        watch = data.get("watch", {})
        for i, (name, entry) in enumerate(sorted(watch.items(), key=lambda item: "unavailable" in item[1])):
            shown = f"**{name}**" if entry.get("kind") == "sdk" else name
            cell = f"n/a: {entry['unavailable']}" if "unavailable" in entry else _fmt_lat(entry)
            lines.append(f"| {BACKEND_TITLES[backend] if i == 0 else ''} | {shown} | {cell} |")
        floor = _floor_name(data)
        if floor and watch:
            lines.append(f"| | *{floor}* | {_fmt_lat(data['uncontended'][floor])} |")
    write_rows = [(b, d["writes"]) for b, d in results["backends"].items() if d.get("writes")]
    if write_rows:
        lines += [
            "",
            "Config writes, one after another on one session: `config.set` plain, and guarded by a held "
            "lock (the server checks the lock in the same atomic operation: etcd's transaction, "
            "ZooKeeper's multi, Consul's transaction), next to one raw write. *guarded / plain* is the "
            "ratio of the best p50s.",
            "",
            "| backend | write | writes /s | p50 / p99 | guarded / plain |",
            "|---|---|--:|--:|--:|",
        ]
        for backend, writes in write_rows:
            plain = _best(writes.get("coordination config.set", {}), "p50_ms")
            for i, (name, entry) in enumerate(writes.items()):
                ratio = ""
                if "guarded" in name:
                    ratio = (
                        f"{_best(entry, 'p50_ms') / plain:.2f}x" if plain and not math.isnan(plain) else ""
                    )
                shown = f"*{name}*" if entry.get("kind") == "floor" else f"**{name}**"
                lines.append(
                    f"| {BACKEND_TITLES[backend] if i == 0 else ''} | {shown} | {_fmt_ops(entry)} "
                    f"| {_fmt_lat(entry)} | {ratio} |"
                )
    lines += ["", "## Targets", "", "| backend | target | figure | met |", "|---|---|---|---|"]
    for t in results.get("targets", []):
        met = "**met**" if t["met"] else "**missed**"
        lines.append(f"| {BACKEND_TITLES[t['backend']]} | {t['target']} | {t['text']} | {met} |")
    scale_rows = [(b, d["scale"]) for b, d in results["backends"].items() if d.get("scale")]
    if scale_rows:
        lines += [
            "",
            "## Scale (this SDK)",
            "",
            "| backend | contenders on one election | client memory per contender | wake-ups per release "
            "| hand-over p50 | watched keys on one session | set-up | client memory per watch "
            "| client→server writes/s at idle: 1 key → all keys |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for backend, scale in scale_rows:
            e, w = scale.get("election", {}), scale.get("watches", {})
            if "error" in e:
                e_cells = [f"failed: {e['error'][:60]}", "", "", ""]
            else:
                e_cells = [
                    f"{e.get('contenders', 0):,}",
                    f"{e.get('client_kib_per_contender', math.nan):,.0f} KiB",
                    ", ".join(str(x) for x in e.get("wakeups_per_release", [])),
                    f"{e.get('handover_p50_ms', math.nan):.1f} ms",
                ]
            if "error" in w:
                w_cells = [f"failed: {w['error'][:60]}", "", "", ""]
            else:
                many = next((v for k, v in w.items() if k.startswith("idle_") and k != "idle_1_key"), {})
                w_cells = [
                    f"{w.get('keys', 0):,}",
                    f"{w.get('setup_seconds', math.nan):.1f} s",
                    f"{w.get('client_kib_per_watch', math.nan):.1f} KiB",
                    f"{w.get('idle_1_key', {}).get('writes_per_s', math.nan):.2f} → "
                    f"{many.get('writes_per_s', math.nan):.2f}",
                ]
            lines.append(f"| {BACKEND_TITLES[backend]} | " + " | ".join(e_cells + w_cells) + " |")
        notes = [
            f"{BACKEND_TITLES[b]}: {s['watches']['note']}"
            for b, s in scale_rows
            if "note" in s.get("watches", {})
        ]
        if notes:
            lines += ["", *notes]
    return "\n".join(lines) + "\n"


# -- plot -------------------------------------------------------------------------------------


def plot(results: dict[str, Any], samples: dict[str, dict[str, dict[str, list[float]]]], path: Path) -> None:
    """Latency distributions (empirical CDFs) per backend: acquire+release, hand-over, watch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    backends = [b for b in results["backends"] if b in samples]
    if not backends:
        return
    columns = [
        ("uncontended", "acquire + release, uncontended"),
        ("handover", "hand-over, 8 waiting"),
        ("watch", "watch: write → event"),
    ]
    fig, axes = plt.subplots(len(backends), 3, figsize=(16, 4.2 * len(backends)), squeeze=False)
    styles = {"sdk": ("-", 2.4), "raw": ("--", 1.6), "peer": (":", 1.6), "floor": ("-.", 1.2)}
    for row, backend in enumerate(backends):
        data = results["backends"][backend]
        write = _write_p50(data)
        for col, (section, title) in enumerate(columns):
            ax = axes[row][col]
            for name, values in samples[backend].get(section, {}).items():
                if not values:
                    continue
                kind = _kind(data, section, name)
                style, width = styles.get(kind, ("-", 1.0))
                ordered = sorted(v * 1000 for v in values)
                ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
                ax.plot(ordered, ys, linestyle=style, linewidth=width, label=name)
            if not math.isnan(write):
                ax.axvline(write, color="grey", linewidth=0.8)
                ax.annotate("raw write p50", (write, 0.02), fontsize=7, color="grey", rotation=90)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(0, 1)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{BACKEND_TITLES[backend]}: {title}", fontsize=10)
            ax.set_xlabel("ms (log scale)")
            if col == 0:
                ax.set_ylabel("fraction of operations <= x")
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "Latency distributions (all rounds); solid bold: this SDK, dashed: same recipe by hand, "
        "dotted: peer libraries",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _kind(data: dict[str, Any], section: str, name: str) -> str:
    table = data.get(section, {})
    if section == "handover":
        table = table.get("8", {})
    entry: dict[str, Any] = table.get(name, {})
    return str(entry.get("kind", ""))
