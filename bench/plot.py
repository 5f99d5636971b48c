"""Plots of load generator results (matplotlib, Agg backend: no display needed).

    python -m bench.plot docs/bench/http.json -o docs/bench/http.png
    python -m bench.plot a.json b.json -o compare.png     # several runs overlaid

Panels: latency p50/p99/max per second (log scale), acked orders per second, and the
order-to-visible latency when the run had --visibility.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _label(result: dict, many: bool) -> str:
    if result.get("label"):
        return result["label"]
    cfg = result.get("config", {})
    loop = f"{cfg.get('rate'):,.0f}/s offered" if cfg.get("rate") else "closed loop"
    text = f"{cfg.get('mode', '?')} c={cfg.get('connections')}"
    if cfg.get("mode") == "ws" and not cfg.get("rate"):
        text += f"x{cfg.get('inflight')}"
    return f"{text} {loop}" if many else text + f", {loop}"


def plot_results(results: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(results) > 1
    has_vis = any(
        any(p.get("visible_p99_ms") is not None for p in r.get("series", [])) for r in results
    )
    rows = 3 if has_vis else 2
    fig, axes = plt.subplots(rows, 1, figsize=(11, 3.2 * rows + 0.6), sharex=True)
    ax_lat, ax_tp = axes[0], axes[1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = [_label(r, many) for r in results]
    if len(set(names)) < len(names):  # same settings twice: tell the runs apart
        names = [f"#{i + 1} {n}" for i, n in enumerate(names)]
    for i, r in enumerate(results):
        series = r.get("series", [])
        color = colors[i % len(colors)]
        name = names[i]
        t = [p["t"] for p in series]
        for key, style, width, what in (("p50_ms", ":", 1.2, "p50"), ("p99_ms", "-", 1.6, "p99"), ("max_ms", "--", 0.8, "max")):
            pts = [(x, p.get(key)) for x, p in zip(t, series) if p.get(key) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax_lat.plot(xs, ys, style, color=color if many else None, linewidth=width,
                            label=f"{name} {what}" if many else what)
        ax_tp.plot(t, [p.get("acked_per_s", 0) for p in series], "-", color=color, linewidth=1.5,
                   label=f"{name} acked/s" if many else "acked/s")
        errs = [p.get("errors", 0) for p in series]
        if any(errs):
            ax_tp.bar(t, errs, width=0.8, color="tab:red", alpha=0.6, label=f"{name} errors/s" if many else "errors/s")
        offered = r.get("config", {}).get("rate")
        if offered:
            ax_tp.axhline(offered, color=color, linestyle="--", linewidth=0.8, label=f"{name} offered" if many else "offered")
        if has_vis:
            ax_vis = axes[2]
            for key, style, what in (("visible_p50_ms", ":", "orderbook p50"), ("visible_p99_ms", "-", "orderbook p99"),
                                     ("stream_p99_ms", "--", "stream p99")):
                pts = [(x, p.get(key)) for x, p in zip(t, series) if p.get(key) is not None]
                if pts:
                    xs, ys = zip(*pts)
                    ax_vis.plot(xs, ys, style, color=color if many else None, label=f"{name} {what}" if many else what)
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax_lat.set_yscale("log")
    # labels at 1-2-5 steps (0.5, 1, 2, 5, 10, 20 ms ...) rather than 2x10^1
    ax_lat.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_lat.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax_lat.yaxis.set_minor_formatter(NullFormatter())
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend(loc="upper right", fontsize=8)
    ax_tp.set_ylabel("per second")
    ax_tp.set_ylim(bottom=0)
    ax_tp.grid(True, alpha=0.3)
    ax_tp.legend(loc="lower right", fontsize=8)
    if has_vis:
        axes[2].set_ylabel("order-to-visible (ms)")
        axes[2].grid(True, alpha=0.3)
        axes[2].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds since start of measurement")
    if not many and results:
        r = results[0]
        s = r.get("summary", {})
        lat = s.get("latency_ms", {})
        title = (f"{_label(r, False)}: {s.get('acked_per_s', 0):,.0f} acked/s, "
                 f"p50 {lat.get('p50', float('nan')):.2f} ms, p99 {lat.get('p99', float('nan')):.2f} ms, "
                 f"errors {s.get('error_rate', 0):.2%}")
    else:
        title = "load generator results"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description="plot bench.loadgen JSON results")
    p.add_argument("results", nargs="+", help="result JSON files written by python -m bench.loadgen --out")
    p.add_argument("-o", "--out", required=True, help="PNG file")
    a = p.parse_args(argv)
    results = [json.loads(Path(f).read_text()) for f in a.results]
    plot_results(results, a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
