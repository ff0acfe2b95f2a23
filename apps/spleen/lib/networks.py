"""Networks, defined once and shared by training, inference and export.

Sized for interactive speed on a 2-core CPU: small 3D UNets (about 1.2 M parameters) rather than
MONAI Label's stock DeepGrow/DeepEdit networks, which cost 1–2 TFLOP per click.
"""

from __future__ import annotations

from monai.networks.nets import UNet


def unet(in_channels: int, out_channels: int = 2) -> UNet:
    """The UNet all three models share: 16→128 channels, three downsamplings, residual units."""
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=2,
        norm="instance",
    )


def segmentation_network() -> UNet:
    """Spleen segmentation: 1 CT channel in, background/spleen logits out."""
    return unet(in_channels=1)


def deepgrow_network() -> UNet:
    """DeepGrow 3D: CT + foreground-click + background-click heatmaps in, background/object logits out."""
    return unet(in_channels=3)


def extreme_points_network() -> UNet:
    """Extreme points (DExtr3D style): CT + extreme-point heatmap in, background/object logits out."""
    return unet(in_channels=2)
