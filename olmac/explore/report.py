"""The sweep's report (docs/explore.md): Pareto fronts as PNG, the front highlighted and
every point labelled, and a markdown page linking them."""

from pathlib import Path

__all__ = ["pareto_front", "PLOTS", "write_report"]


def pareto_front(costs, gains) -> list[int]:
    """Indices of the points no other point dominates (cost no higher and gain no lower,
    one of them strictly), in the order of increasing cost; equal points all stay.

    >>> pareto_front([1, 2, 3, 2], [50, 60, 55, 40])
    [0, 1]
    """
    points = list(zip(costs, gains))
    front = [index for index, (cost, gain) in enumerate(points)
             if not any(other_cost <= cost and other_gain >= gain
                        and (other_cost, other_gain) != (cost, gain)
                        for other_cost, other_gain in points)]
    return sorted(front, key=lambda index: (points[index][0], -points[index][1]))


#: The fronts drawn: file stem, title, the cost (x, lower is better) and gain (y, higher
#: is better) columns with their axis titles, and whether one plot is drawn per board.
PLOTS = (
    ("pareto_accuracy_luts", "accuracy vs LUT4", ("luts", "LUT4 (Yosys, network core)"),
     ("accuracy_percent", "golden accuracy on the digits test split (%)"), True),
    ("pareto_accuracy_memory", "accuracy vs on-chip memory",
     ("memory_bits", "on-chip memory (bits)"),
     ("accuracy_percent", "golden accuracy on the digits test split (%)"), False),
    ("pareto_throughput_luts", "images/s vs LUT4", ("luts", "LUT4 (Yosys, network core)"),
     ("images_per_second", "images/s at the placed-and-routed fmax"), True),
)


def _plot(path: Path, rows: list[dict], x: tuple, y: tuple, title: str) -> list[dict]:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    xs = [row[x[0]] for row in rows]
    ys = [row[y[0]] for row in rows]
    front = pareto_front(xs, ys)
    figure, axes = plt.subplots(figsize=(8, 5.5))
    axes.scatter(xs, ys, color="#bbbbbb", label="points", zorder=2)
    # a staircase: each front point holds its gain until the next costlier one betters it
    axes.plot([xs[i] for i in front], [ys[i] for i in front], "-o", color="#cc3311",
              drawstyle="steps-post", label="Pareto front", zorder=3)
    for row, cost, gain in zip(rows, xs, ys):
        axes.annotate(row["label"], (cost, gain), textcoords="offset points", xytext=(4, 4),
                      fontsize=7)
    axes.set_xlabel(x[1])
    axes.set_ylabel(y[1])
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return [rows[i] for i in front]


def _front_table(front: list[dict], x: str, y: str) -> str:
    lines = [f"| point | {x} | {y} |", "|---|---|---|"]
    lines += [f"| {row['label']} | {row[x]:.6g} | {row[y]:.6g} |" for row in front]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path | str, name: str, rows: list[dict]) -> Path:
    """Draw every front of :data:`PLOTS` the rows' measurements allow (only rows measured
    ``ok`` with both columns) into ``out_dir`` and write ``report.md`` linking them; returns
    the page's path."""
    out_dir = Path(out_dir)
    ok = [row for row in rows if row["status"] == "ok"]
    failed = [row for row in rows if row["status"] != "ok"]
    sections = []
    for stem, what, x, y, per_board in PLOTS:
        usable = [row for row in ok if row.get(x[0]) is not None and row.get(y[0]) is not None]
        groups = {}
        for row in usable:
            groups.setdefault(row.get("board") if per_board else None, []).append(row)
        for board, group in groups.items():
            file = f"{stem}_{board}.png" if per_board else f"{stem}.png"
            title = f"{name}: {what}" + (f" on {board}" if per_board else "")
            front = _plot(out_dir / file, group, x, y, title)
            sections.append(f"## {title}\n\n![{title}]({file})\n\nThe front:\n\n"
                            f"{_front_table(front, x[0], y[0])}")
    lines = [f"# olmac explore: {name}\n",
             f"{len(rows)} points: {len(ok)} measured, {len(failed)} failed. Every row is "
             f"in [results.csv](results.csv) and [results.jsonl](results.jsonl).\n"]
    if not sections:
        lines.append("No front to draw: the sweep measured no pair of a cost and a gain.\n")
    lines += sections
    if failed:
        lines.append("## Failed points\n")
        lines += [f"- {row['label']}: {row['error'].splitlines()[0] if row['error'] else ''}"
                  for row in failed]
        lines.append("")
    page = out_dir / "report.md"
    page.write_text("\n".join(lines))
    return page
