"""Geometry of the labels: where a layer's pixels land, clipping, and how well a quad covers ink.

synthtiger draws a layer by mapping its image corners (0,0), (w,0), (w,h), (0,h) onto the
layer's quad with the quad's coordinates truncated to integers (`utils.paste_image`); the same
mapping carries any point of the layer image to the output, so labels follow every geometric
transform (placement, scaling, perspective) that moved the quad.
"""
from __future__ import annotations

import cv2
import numpy as np
from shapely.geometry import Polygon


def layer_transform(layer) -> np.ndarray:
    """3x3 homography from a layer image's pixels to where synthtiger pastes them."""
    height, width = layer.image.shape[:2]
    origin = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    target = np.array(layer.quad, dtype=int).astype(np.float32)  # as paste_image truncates
    return cv2.getPerspectiveTransform(origin, target)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ matrix.T
    return homogeneous[:, :2] / homogeneous[:, 2:3]


def clip_quad(quad: np.ndarray, width: int, height: int) -> tuple[float, ...] | None:
    """Corners clamped to the image, as (x1, y1, ..., x4, y4); None if nothing is left inside."""
    inside = Polygon(quad).intersection(Polygon([(0, 0), (width, 0), (width, height),
                                                 (0, height)]))
    if inside.is_empty or inside.area < 1:
        return None
    clipped = np.stack([np.clip(quad[:, 0], 0, width), np.clip(quad[:, 1], 0, height)], axis=1)
    return tuple(round(float(v), 2) for v in clipped.reshape(-1))


def min_area_rect(mask: np.ndarray) -> np.ndarray | None:
    """The smallest rotated rectangle around a mask's pixels (4 corners), or None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    # Pixel i covers [i, i+1): use both edges so a one-pixel stroke has an area.
    points = np.concatenate([np.stack([xs, ys], 1), np.stack([xs + 1, ys + 1], 1)])
    return cv2.boxPoints(cv2.minAreaRect(points.astype(np.float32)))


def quad_iou(quad, other) -> float:
    a, b = Polygon(np.asarray(quad).reshape(4, 2)), Polygon(np.asarray(other).reshape(4, 2))
    if not a.is_valid or not b.is_valid:
        a, b = a.buffer(0), b.buffer(0)
    union = a.union(b).area
    return a.intersection(b).area / union if union > 0 else 0.0
