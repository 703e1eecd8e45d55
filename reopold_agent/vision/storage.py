"""Images of a run directory: written once, referenced by trajectories, reloaded for replay.

Every image an episode meets is stored once per run as ``<run_dir>/images/<content hash>.png``
(the resized image the vision encoder saw, lossless), however many trajectories and steps show
it; trajectory lines hold only :class:`~reopold_agent.trajectory.ImageRecord` references.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image

from ..trajectory import Trajectory
from .processing import ImageFeatures, VisionInputs, VisionProcessor

IMAGES_DIR = "images"
"""Folder of a run directory holding its images."""


def image_path(features: ImageFeatures) -> str:
    """Path of an image relative to the run directory."""
    return f"{IMAGES_DIR}/{features.key}.png"


def save_trajectory_images(run_dir: str | Path, trajectories: list[Trajectory]) -> int:
    """Write the images of ``trajectories`` not yet in ``run_dir``; returns how many were new.

    Each file is written to a temporary name and renamed, so a killed run never leaves a
    truncated image behind a valid name.
    """
    run_dir = Path(run_dir)
    written = 0
    for traj in trajectories:
        if traj.pixel_inputs is None:
            continue
        for record, image in zip(traj.images, traj.pixel_inputs.images):
            target = run_dir / record.path
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".png", dir=target.parent)
            os.close(fd)
            try:
                image.save(tmp, format="PNG")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            written += 1
    return written


def open_stored_image(run_dir: str | Path, path: str) -> Image.Image:
    """Open one stored image (RGB), with a clear error when it is missing."""
    file = Path(run_dir) / path
    if not file.is_file():
        raise FileNotFoundError(f"image {path} of the trajectory is not in {run_dir} (expected {file})")
    with Image.open(file) as image:
        return image.convert("RGB")


def load_pixel_inputs(traj: Trajectory, run_dir: str | Path, vision: VisionProcessor) -> VisionInputs | None:
    """Recompute ``traj.pixel_inputs`` from the run directory's stored images, and set it.

    Raises:
        FileNotFoundError: an image file is missing.
        ValueError: an image's patch grid differs from the recorded one (different processor
            settings than the run that wrote it).
    """
    features = []
    for record in traj.images:
        feat = vision.encode_resized(open_stored_image(run_dir, record.path))
        if record.grid_thw is not None and list(feat.grid_thw) != list(record.grid_thw):
            raise ValueError(f"image {record.path} gives patch grid {list(feat.grid_thw)} but the trajectory recorded "
                             f"{record.grid_thw}: the processor's patch settings differ from the run's")
        if feat.num_tokens != record.token_end - record.token_start:
            raise ValueError(f"image {record.path} takes {feat.num_tokens} tokens but spans "
                             f"{record.token_end - record.token_start} in the trajectory")
        features.append(feat)
    traj.pixel_inputs = VisionInputs.from_features(features)
    return traj.pixel_inputs
