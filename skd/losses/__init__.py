"""Task and distillation losses, as pure functions of tensors (and the connector modules that
map a student's features to the teacher's channels). The training step (skd.engine.steps) calls
them through the term list of skd.engine.terms, which also holds their weights.

| term | function | reduction over the batch |
| --- | --- | --- |
| task (CE + 0.4 aux, OHEM optional) | `task_loss` | mean over labelled pixels |
| pi, pixel-wise (paper) | `pixel_wise_loss` | SUM over images (each image's mean over H*W) |
| pa, pair-wise (paper) | `pair_wise_loss` | mean over images |
| ho, holistic (paper) | `generator_loss`, `discriminator_loss`, `gradient_penalty` | mean over images |
| CWD | `channel_wise_loss` | mean over images and channels |
| DIST | `dist_loss` | inter: mean over pixels; intra: correlation over all pixels of the batch |
| KD | `kd_loss` | mean over pixels and images |
| AT (Zagoruyko & Komodakis) | `attention_transfer_loss` | mean over images and positions |
| LOCAL (8-neighbour distances) | `local_affinity_loss` | mean over images and neighbour pairs |
| IFVD | `ifvd_loss` | mean over images and positions |
| FitNet | `fitnet_loss` (+ `FitNetConnector`) | mean over every element |

Under DistributedDataParallel (gradients averaged over K ranks, each with B/K images):
- batch-summed: `pixel_wise_loss` sums over its B/K local images, so the DDP average would be 1/K
  of the single-process gradient; the caller multiplies the local value by the world size K, and
  the averaged gradient then equals the single-process one for the same global batch of B.
- per-rank: DIST's intra-class term correlates over the rank's local pixels only (a Pearson
  correlation does not split into a sum over ranks), so it is close to, not equal to, the
  single-process value; the inter-class term is a per-pixel mean and is exact.
- batch means, exact under DDP as they are: task, pair-wise, holistic (including the gradient
  penalty), CWD, KD, AT, LOCAL, IFVD and FitNet.
"""
from skd.losses.attention import attention_map, attention_transfer_loss
from skd.losses.cwd import Connector, channel_wise_loss
from skd.losses.dist import dist_loss
from skd.losses.fitnet import FitNetConnector, fitnet_loss
from skd.losses.holistic import discriminator_loss, generator_loss, gradient_penalty
from skd.losses.ifvd import ifvd_loss
from skd.losses.kd import kd_loss
from skd.losses.local_affinity import local_affinity_loss
from skd.losses.pair_wise import choose_impl, pair_wise_loss
from skd.losses.pixel_wise import pixel_wise_loss
from skd.losses.task import cross_entropy_2d, ohem_cross_entropy_2d, task_loss

__all__ = [
    "Connector",
    "FitNetConnector",
    "attention_map",
    "attention_transfer_loss",
    "channel_wise_loss",
    "choose_impl",
    "cross_entropy_2d",
    "discriminator_loss",
    "dist_loss",
    "fitnet_loss",
    "generator_loss",
    "gradient_penalty",
    "ifvd_loss",
    "kd_loss",
    "local_affinity_loss",
    "ohem_cross_entropy_2d",
    "pair_wise_loss",
    "pixel_wise_loss",
    "task_loss",
]
