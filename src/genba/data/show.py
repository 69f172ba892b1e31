"""A PNG a person can look at: an episode's camera frames as a contact sheet, its actions beneath.

``genba data show DATASET --episode N --out FILE.png`` draws one episode of a
dataset; :func:`contact_sheet` takes frames and actions from anywhere (an
evaluation rollout too). Every ``k``-th frame per camera (``k`` chosen so at
most ``columns`` frames fit a row), one row per camera, each tile titled with
its frame index; beneath, every action axis over time with the shown frames
marked. The image is exactly ``sheet_size(...)`` pixels (no tight bounding
box), so a caller can lay sheets side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

DPI = 100
WIDTH_PX = 1200
PLOT_PX = 320  # height of the action plot
TITLE_PX = 40


def pick_frames(length: int, columns: int, every: int | None = None) -> np.ndarray:
    """Indices of the frames shown: every ``every``-th (default: the stride fitting ``columns``), the last included.

    The default stride ``ceil((length - 1) / (columns - 1))`` never shows more than ``columns`` frames.
    """
    k = every or max(1, math.ceil((length - 1) / max(columns - 1, 1)))
    idx = np.arange(0, length, k)
    return idx if idx[-1] == length - 1 else np.append(idx, length - 1)


def sheet_size(n_cameras: int, columns: int, aspect: float = 1.0) -> tuple[int, int]:
    """(width, height) in pixels of a sheet with ``n_cameras`` rows of ``columns`` tiles of height/width ``aspect``."""
    tile_h = int(round(WIDTH_PX / columns * aspect)) + 14  # + the frame-index label
    return WIDTH_PX, TITLE_PX + n_cameras * tile_h + PLOT_PX


def contact_sheet(out: str | Path, images: Mapping[str, np.ndarray], actions: np.ndarray,
                  action_names: Sequence[str] = (), title: str = "", columns: int = 12,
                  every: int | None = None) -> Path:
    """Write the sheet for ``images`` (camera -> (T, H, W, 3) uint8) and ``actions`` (T, A) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # headless; no display on a cell PC or in CI
    import matplotlib.pyplot as plt

    actions = np.asarray(actions, np.float64).reshape(len(actions), -1)
    length = len(actions)
    shown = pick_frames(length, columns, every)
    cols = len(shown)
    aspect = float(np.mean([v.shape[1] / v.shape[2] for v in images.values()])) if images else 1.0
    w, h = sheet_size(len(images), cols, aspect)
    fig = plt.figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    fig.suptitle(title, fontsize=10, y=1 - 0.5 * TITLE_PX / h)
    tile_h = (h - TITLE_PX - PLOT_PX) / max(len(images), 1)
    for r, (cam, frames) in enumerate(images.items()):
        for c, t in enumerate(shown):
            ax = fig.add_axes((c / cols, 1 - (TITLE_PX + (r + 1) * tile_h) / h, 1 / cols, (tile_h - 14) / h))
            ax.imshow(frames[t], interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"{cam} t={t}" if c == 0 else f"t={t}", fontsize=6, pad=2)
    ax = fig.add_axes((0.06, 0.12 * PLOT_PX / h, 0.9, 0.75 * PLOT_PX / h))
    names = list(action_names) or [f"a{i}" for i in range(actions.shape[1])]
    for i in range(actions.shape[1]):
        ax.plot(np.arange(length), actions[:, i], lw=1, label=names[i] if i < len(names) else f"a{i}")
    for t in shown:
        ax.axvline(t, color="0.85", lw=0.5, zorder=0)
    ax.set_xlim(0, max(length - 1, 1))
    ax.set_xlabel("frame", fontsize=7)
    ax.set_ylabel("action", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, ncol=min(8, actions.shape[1]), loc="upper right")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def show_episode(root: str | Path, episode: int, out: str | Path, columns: int = 12,
                 every: int | None = None) -> Path:
    """The contact sheet of episode ``episode`` of the dataset at ``root``."""
    from genba.data.dataset import open_dataset
    from genba.data.layout import DatasetError

    ds = open_dataset(root)
    if not 0 <= episode < ds.num_episodes:
        raise DatasetError(f"{root}: episode {episode} outside 0..{ds.num_episodes - 1}")
    ep = ds.episodes[episode]
    rows = np.arange(ep.start, ep.stop)
    images = {cam: store.take(rows) for cam, store in ds.images.items()}
    title = (f"{ds.spec.name} episode {episode}: {ds.instruction(ep.task_index)} ({ep.length} frames, "
             f"{ds.spec.fps:g} Hz, obs_mode {ds.spec.obs_mode})")
    return contact_sheet(out, images, ds.action[ep.start:ep.stop], ds.spec.action_names, title, columns, every)
