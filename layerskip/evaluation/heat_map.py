"""The sweep's heat map: tokens/s over exit layer x number of speculations, each cell labelled with
its speed-up over autoregressive decoding, titled with what was measured."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

#: smallest figure (inches), so a 1x1 or 1xN grid still has room for its title, labels and colour bar
MIN_WIDTH, MIN_HEIGHT = 6.0, 4.0


def heat_map(rows: Sequence[Mapping[str, Any]], path: Path, baseline_tps: float, title: str) -> None:
    """Write the PNG of ``rows`` (``layerskip.evaluation.sweep`` CSV rows) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    exits = sorted({r["exit_layer"] for r in rows})
    ks = sorted({r["num_speculations"] for r in rows})
    values = np.full((len(exits), len(ks)), np.nan)
    for r in rows:
        if r["tokens_per_second"] is not None:
            values[exits.index(r["exit_layer"]), ks.index(r["num_speculations"])] = r["tokens_per_second"]
    size = (max(MIN_WIDTH, 2.5 + 0.9 * len(ks)), max(MIN_HEIGHT, 2.0 + 0.5 * len(exits)))
    fig, ax = plt.subplots(figsize=size)
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(exits)), [str(e) for e in exits])
    ax.set_xlabel("num_speculations")
    ax.set_ylabel("exit_layer")
    heading = textwrap.fill(title, width=int(size[0] * 11))  # about 11 characters per inch at 9 pt
    ax.set_title(f"{heading}\ntokens/s; cells: speed-up over autoregressive ({baseline_tps:.1f} tok/s)", fontsize=9)
    middle = np.nanmin(values) + (np.nanmax(values) - np.nanmin(values)) / 2 if np.isfinite(values).any() else 0
    for i in range(len(exits)):
        for j in range(len(ks)):
            if not np.isnan(values[i, j]):
                colour = "black" if values[i, j] > middle else "white"  # readable on viridis' light and dark ends
                ax.text(j, i, f"{values[i, j] / baseline_tps:.2f}x", ha="center", va="center", color=colour, fontsize=9)
    fig.colorbar(image, ax=ax, label="tokens/s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
