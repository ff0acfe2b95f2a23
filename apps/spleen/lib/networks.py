"""Networks, defined once and shared by training, inference and export.

Sized for interactive speed on a 2-core CPU: small 3D UNets rather than MONAI Label's stock
(much larger) networks.
"""

from __future__ import annotations

from monai.networks.nets import UNet


def segmentation_network() -> UNet:
    """Spleen segmentation: 1 CT channel in, background/spleen logits out, at the working spacing."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=2,
        norm="batch",
    )
