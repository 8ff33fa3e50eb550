"""Colours and a small HUD for the top-down frames of :func:`dynamics.render_labels`."""

from __future__ import annotations

import numpy as np

from jaxrl_impala.envs.config import DrivingConfig

# indexed by the labels of dynamics (GRASS, ROAD, LANE_LINE, EDGE_LINE, CENTRE_LINE, FINISH,
# BEAM, CAR, EGO, PED, HIT)
PALETTE = np.array(
    [
        (76, 128, 62),  # grass
        (88, 88, 92),  # road
        (235, 235, 235),  # dashed lane line
        (245, 245, 245),  # edge line
        (240, 200, 40),  # centre line between directions
        (250, 250, 250),  # finish line
        (120, 200, 255),  # lidar beam
        (40, 90, 210),  # other vehicles
        (220, 40, 40),  # ego
        (255, 150, 0),  # pedestrian
        (255, 255, 120),  # lidar hit
    ],
    np.uint8,
)
SURFACE_COLOURS = {0.9: (140, 140, 140), 0.6: (60, 120, 200), 0.25: (200, 235, 255)}


def labels_to_rgb(labels: np.ndarray, state, cfg: DrivingConfig, env: int = 0) -> np.ndarray:
    """Colour a label image and draw a HUD for env ``env`` of a batched state.

    HUD (bottom rows): speed bar (green, red above the limit) with a white tick at the speed
    limit; route-completion bar (white); the square on the left shows the surface
    (grey dry, blue wet, pale ice).

    Args:
        labels: uint8 [H, W] from ``dynamics.render_labels``.
        state: batched ``EnvState``.
        cfg: the env config.

    Returns:
        uint8 [H, W, 3].
    """
    img = PALETTE[labels].copy()
    h, w = labels.shape
    v = float(np.asarray(state.v)[env])
    limit = float(np.asarray(state.speed_limit)[env])
    mu = float(np.asarray(state.mu)[env])
    comp = float(np.clip(np.asarray(state.s)[env] / np.asarray(state.route_length)[env], 0, 1))
    x0, x1 = 30, w - 10
    img[h - 26 : h - 2, 0:w] = (20, 20, 20)
    span = x1 - x0

    def bar(row: int, frac: float, colour) -> None:
        img[row : row + 8, x0 : x0 + int(span * np.clip(frac, 0, 1))] = colour

    bar(h - 24, v / cfg.max_speed, (230, 60, 60) if v > limit * 1.02 else (60, 200, 90))
    tick = x0 + int(span * limit / cfg.max_speed)
    img[h - 26 : h - 14, tick : tick + 2] = (255, 255, 255)
    bar(h - 12, comp, (230, 230, 230))
    colour = min(SURFACE_COLOURS.items(), key=lambda kv: abs(kv[0] - mu))[1]
    img[h - 24 : h - 4, 6:24] = colour
    return img
