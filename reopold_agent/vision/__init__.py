"""Vision-language support: image processing, placeholder expansion, 3D positions (tiny VL
models for tests and the demo: :mod:`reopold_agent.demo.tiny_vl`).

Text and vision-language students share one rollout engine, teacher scorer and trainer; this
package holds the only image-specific pieces they call.
"""

from .positions import mrope_position_ids, next_positions
from .processing import ImageFeatures, VisionInputs, VisionProcessor

__all__ = ["ImageFeatures", "VisionInputs", "VisionProcessor", "mrope_position_ids", "next_positions"]
