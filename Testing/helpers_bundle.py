"""Small model bundles the tests create (no weights are shipped with the tests)."""
from __future__ import annotations

import torch

from KidneyTumorSegLib.bundles.bundle import save_bundle
from KidneyTumorSegLib.config import NetworkConfig, PostprocessConfig, StageConfig
from KidneyTumorSegLib.engine.networks import build_network

TINY_NET = NetworkConfig(architecture="resunet", channels=(4, 8, 16), strides=(1, 2, 2), deep_supervision=False)


def tiny_stages(patch=(32, 64, 64)):
    return [
        StageConfig("coarse", "roi", network=TINY_NET, spacing=(6.0, 6.0, 6.0), patch_size=patch, norm_mean=0.0, norm_std=500.0),
        StageConfig("kidney", "kidney", network=TINY_NET, spacing=(4.0, 3.0, 3.0), patch_size=patch, norm_mean=0.0, norm_std=500.0),
        StageConfig("tumor", "tumor", network=TINY_NET, spacing=(4.0, 2.0, 2.0), patch_size=patch, mask_outside=True,
                    norm_mean=0.0, norm_std=500.0),
    ]


def make_tiny_bundle(path, seed=0, ensemble=1, overwrite=False, fg_bias=None, limitations="", post=None):
    """A bundle of randomly initialised tiny networks (stage 4: ``post``, default ``PostprocessConfig()``).

    ``fg_bias``: if given, the last layer's bias is set so that the network
    predicts foreground (positive) or background (negative) almost everywhere,
    which makes the cascade's path through the stages deterministic.
    """
    torch.manual_seed(seed)
    sds = {}
    stages = tiny_stages()
    for st in stages:
        members = []
        for _ in range(ensemble):
            net = build_network(st.network)
            if fg_bias is not None:
                with torch.no_grad():
                    last = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d,))][-1]
                    last.weight.zero_()
                    last.bias.copy_(torch.tensor([0.0, float(fg_bias)]))
            members.append(net.state_dict())
        sds[st.role] = members
    return save_bundle(path, stages, sds, post or PostprocessConfig(), name="tiny-test", version="0", description="test bundle",
                       provenance={"purpose": "tests"}, overwrite=overwrite, limitations=limitations)
