"""skd: Structured Knowledge Distillation for Dense Prediction (Liu et al., CVPR 2019 / TPAMI).

Subpackages: `models` (PSPNet, discriminator, checkpoint loading), `data` (Cityscapes, synthetic
data), `losses` (task and distillation losses), `nn` (norm layers, InPlace-ABN), `engine`
(training step, evaluation, checkpoints, distributed set-up), `metrics` (confusion matrix, IoU).
"""
__version__ = "0.1.0"
