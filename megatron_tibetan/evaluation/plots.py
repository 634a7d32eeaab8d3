"""PNG plots of a layer-wise analysis (heatmap layer x module, top-k tensors, modules, correlation)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from megatron_tibetan.evaluation.layers import MODULE_ORDER  # noqa: E402


def save(fig, path: Path) -> None:
    """Lay out, write (110 dpi, as every plot of the project) and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(t: dict) -> str:
    return f"L{t['layer']} {t['module']}" if t["layer"] is not None else t["name"]


def heatmap(comparison: dict, title: str, path: Path) -> Path:
    cells = comparison["cells"]
    layers = sorted({int(k.split("/")[0]) for k in cells})
    modules = [m for m in MODULE_ORDER if any(k.split("/")[1] == m for k in cells)]
    grid = np.full((len(layers), len(modules)), np.nan)
    for key, v in cells.items():
        layer, module = key.split("/")
        grid[layers.index(int(layer)), modules.index(module)] = v["relative"]
    positive = grid[np.isfinite(grid) & (grid > 0)]
    fig, ax = plt.subplots(figsize=(1.1 * len(modules) + 2.5, 0.25 * len(layers) + 2))
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    image = ax.imshow(np.where(grid > 0, grid, np.nan), aspect="auto", cmap="viridis", norm=norm, origin="lower")
    ax.set_xticks(range(len(modules)), modules, rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label="||ΔW|| / ||W||")
    others = {k: v["relative"] for k, v in comparison["modules"].items() if k in ("embedding", "norm_final", "output")}
    ax.set_title(title + "\n" + "  ".join(f"{k} {v:.2e}" for k, v in others.items()), fontsize=9)
    save(fig, path)
    return path


def top_k(comparison: dict, title: str, path: Path, k: int = 20) -> Path:
    tensors = sorted(comparison["tensors"], key=lambda t: -t["relative"])[:k][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(tensors) + 1.5))
    ax.barh([_label(t) + (" (bias)" if t["name"].endswith(".bias") else "") for t in tensors],
            [t["relative"] for t in tensors], color="tab:blue")
    ax.set_xlabel("||ΔW|| / ||W||")
    ax.set_title(f"{title}: top {len(tensors)} tensors", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    save(fig, path)
    return path


def modules(analysis: dict, path: Path) -> Path:
    comparisons = analysis["comparisons"]
    names = [m for m in MODULE_ORDER if any(m in c["modules"] for c in comparisons.values())]
    width = 0.8 / len(comparisons)
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2, 4))
    for i, (label, c) in enumerate(comparisons.items()):
        values = [c["modules"].get(m, {}).get("relative", np.nan) for m in names]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=f"{label} vs {c['reference']}")
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("||ΔW|| / ||W|| (module total)")
    ax.legend(fontsize=8)
    save(fig, path)
    return path


def correlation(a: dict, b: dict, labels: tuple[str, str], path: Path) -> Path:
    rb = {t["name"]: t for t in b["tensors"]}
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colours = plt.get_cmap("tab20").colors  # one colour per module type (tab10 would repeat)
    for i, module in enumerate(MODULE_ORDER):
        pairs = [(t["relative"], rb[t["name"]]["relative"]) for t in a["tensors"]
                 if t["module"] == module and t["name"] in rb and t["relative"] > 0 and rb[t["name"]]["relative"] > 0]
        if pairs:
            x, y = zip(*pairs)
            ax.scatter(x, y, s=10, label=module, color=colours[i % len(colours)])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{labels[0]}: ||ΔW|| / ||W||")
    ax.set_ylabel(f"{labels[1]}: ||ΔW|| / ||W||")
    ax.legend(fontsize=7, markerscale=1.5)
    save(fig, path)
    return path


def metric_bars(metrics: dict, keys: tuple[str, ...], path: Path, ylabel: str) -> Path | None:
    """Grouped bars, one group per (model, set) that has ``keys``, with the 95% interval as error bars."""
    groups = [(f"{m}\n{s}", v) for m, sets in metrics.items() for s, v in sets.items() if keys[0] in v]
    if not groups:
        return None
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(groups) + 2), 4))
    for i, key in enumerate(keys):
        values = [v[key] for _, v in groups]
        cis = [v.get(f"{key}_ci95") for _, v in groups]
        err = None
        if all(cis):
            err = np.array([[max(0.0, val - lo), max(0.0, hi - val)] for val, (lo, hi) in zip(values, cis)]).T
        ax.bar(np.arange(len(groups)) + i * width, values, width, yerr=err, capsize=2, label=key)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [g for g, _ in groups], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    save(fig, path)
    return path
