"""Plots latency vs offered load from the ramp results of one scenario (bench/run.sh with RAMP=1).

    .venv/bin/python bench/plot.py <scenario> [runs] [results dir] [output PNG]

Reads <dir>/<scenario>-ramp-<server>-<run>.json for both servers (chat-service = rust, Node.js
reference = node) and writes a PNG (default <dir>/<scenario>-ramp.png): p50 and p99 latency
(ms, log scale) against the offered rate (messages/s at the bottom, deliveries/s = messages/s x
room size at the top), one line per server and percentile. With several runs, each step's
point is the median over the runs that reached that step (every run starts at the same rate
and multiplies it by the same factor, so the steps line up). A step where some run delivered
less than 100% is drawn as a large hollow red circle: its latency only counts what arrived. A
step that chat-bench ran twice (its first attempt failed) is drawn with its second attempt.
The p99 bound of the ramp is the dashed horizontal line.
"""

import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")  # no display: write the file only
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
from matplotlib import ticker  # noqa: E402

SERVERS = [("rust", "chat-service", "tab:blue"), ("node", "Node.js reference", "tab:orange")]
PERCENTILES = [("p50", "-", "o"), ("p99", "--", "s")]


def load_runs(directory, scenario, server, runs):
    found = []
    for run in range(1, runs + 1):
        path = os.path.join(directory, f"{scenario}-ramp-{server}-{run}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("ramp") and data.get("steps"):
                found.append(data)
    return found


def by_step(results):
    """Groups the steps of all runs by offered rate (rounded: the rates are products of floats)."""
    steps = {}
    for result in results:
        for step in result["steps"]:
            steps.setdefault(round(step["offered_rate"], 3), []).append(step)
    return sorted(steps.items())


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    scenario = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    directory = sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(__file__), "results")
    output = sys.argv[4] if len(sys.argv) > 4 else os.path.join(directory, f"{scenario}-ramp.png")

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    room_size = None
    p99_max = None
    lost_points = []
    all_rates = set()
    counts = []
    for server, label, color in SERVERS:
        results = load_runs(directory, scenario, server, runs)
        counts.append(f"{label} {len(results)}")
        if not results:
            continue
        room_size = room_size or results[0]["steps"][0].get("room_size")
        p99_max = p99_max or results[0].get("p99_max_ms")
        steps = by_step(results)
        rates = [rate for rate, _ in steps]
        all_rates.update(rates)
        lost = [min(s["delivery_ratio"] for s in group) < 1.0 for _, group in steps]
        for name, style, marker in PERCENTILES:
            values = [statistics.median(s["latency_ms"][name] for s in group) for _, group in steps]
            ax.plot(rates, values, linestyle=style, marker=marker, color=color, label=f"{label} {name}")
            lost_points += [(r, v) for r, v, bad in zip(rates, values, lost) if bad]
    if not all_rates:
        sys.exit(f"plot.py: no ramp results for {scenario} in {directory}")
    # After the lines, so that the legend lists the markers last.
    if lost_points:
        ax.scatter([r for r, _ in lost_points], [v for _, v in lost_points], s=220, facecolors="none",
                   edgecolors="red", linewidths=2, zorder=5, label="delivery < 100% (some run)")

    if p99_max:
        ax.axhline(p99_max, color="grey", linestyle=":", linewidth=1, label=f"p99 bound {p99_max:g} ms")
    # The ramp multiplies the rate by a factor, so the steps are evenly spaced on log axes;
    # each step gets its own tick, labelled in messages/s at the bottom, deliveries/s at the top.
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted(all_rates)
    ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("offered load (messages/s)")
    ax.set_ylabel("latency, send to receive (ms)")
    ax.grid(True, which="major", alpha=0.3)
    if room_size:
        # Each message is delivered once per member of its room (the sender included).
        top = ax.secondary_xaxis("top", functions=(lambda m: m * room_size, lambda d: d / room_size))
        top.xaxis.set_major_locator(ticker.FixedLocator([t * room_size for t in ticks]))
        top.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        top.xaxis.set_minor_locator(ticker.NullLocator())
        top.set_xlabel(f"deliveries/s (rooms of {room_size})")
    if len(ticks) > 8:
        for axis in (ax, top) if room_size else (ax,):
            axis.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.set_title(f"{scenario}: latency vs offered load (median of runs per step: {', '.join(counts)})",
                 fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
