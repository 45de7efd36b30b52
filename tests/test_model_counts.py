"""skd.models.count_flops against hand-derived and independently counted FLOPs, and
scripts/count_models.py's table."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from skd.models import build_model, count_flops, count_parameters
from skd.models.heads import ASPPHead, SKD_HEADS
from skd.nn.norm import BatchNormAct2d


def test_flops_of_one_convolution_are_two_per_multiply_accumulate():
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    assert count_flops(conv_net(conv), (7, 9)) == 2 * 5 * 3 * 9 * 7 * 9


def conv_net(conv: nn.Module) -> nn.Module:
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x)

    return Wrap()


def test_flops_of_an_aspp_head_are_the_hand_count():
    """(c4, h, w) = (16, 5, 7), 8 channels, 3 classes: pool 1x1 on 1x1, 1x1, three 3x3 (a
    dilated 3x3 still counts 9 taps per output), 3x3 bottleneck over 5 x 8, 1x1 classifier."""
    c4, ch, k, h, w = 16, 8, 3, 5, 7
    head = ASPPHead(c4, ch, k, BatchNormAct2d, SKD_HEADS).eval()
    macs = c4 * ch + c4 * ch * h * w + 3 * c4 * ch * 9 * h * w + 5 * ch * ch * 9 * h * w + ch * k * h * w
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        head(torch.zeros(1, c4, h, w))
    assert counter.get_total_flops() == 2 * macs


def hooked_conv_flops(model: nn.Module, size: tuple[int, int]) -> int:
    """2 x output elements x (input channels / groups) x kernel taps, summed over every Conv2d
    through forward hooks: a count independent of FlopCounterMode."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, *size))
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("config", [
    dict(arch="resnet18", width_mult=0.25),
    dict(arch="resnet50", head="aspp", variant="mmseg", width_mult=0.125),
    dict(arch="mobilenetv2", variant="mmseg", width_mult=0.5, head_channels=32, aux_channels=16),
])
def test_network_flops_equal_the_sum_over_its_convolutions(config):
    net = build_model(**config)
    assert count_flops(net, (33, 49)) == hooked_conv_flops(net, (33, 49))


def test_counts_on_the_meta_device_equal_those_on_the_cpu():
    config = dict(arch="resnet18", head="aspp", width_mult=0.25)
    with torch.device("meta"):
        meta = build_model(**config)
    cpu = build_model(**config)
    assert count_parameters(meta) == count_parameters(cpu)
    assert count_flops(meta, (64, 128)) == count_flops(cpu, (64, 128))
    assert cpu.training and count_flops(cpu, (8, 8)) > 0 and cpu.training  # mode restored


def test_count_models_script_prints_the_table(load_script, capsys):
    script = load_script("count_models")
    script.main(["--size", "64", "128", "--only", "skd-pspnet-resnet18", "mmseg-deeplabv3-mobilenetv2"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| network |") and len(out) == 4
    row = next(line for line in out if "skd-pspnet-resnet18 " in line)
    assert "13,068,262" in row
