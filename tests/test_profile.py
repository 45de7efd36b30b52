"""skd.profile: FLOPs against hand counts, the memory measure against known allocations, the
timer, and the CLI on a tiny network."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from skd.models import build_pspnet
from skd.profile import count_flops, main, network_flops, peak_tensor_bytes, time_forward


def test_single_conv_flops_are_2_cin_cout_k2_hw():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False))
    total, by_child = count_flops(conv, torch.zeros(1, 3, 10, 12))
    assert total == 2 * 3 * 8 * 3 * 3 * 10 * 12 == 51840
    assert by_child == {"0": 51840}


def test_strided_conv_and_linear_flops():
    model = nn.Sequential(nn.Conv2d(4, 6, 5, stride=2, padding=2, bias=False), nn.Flatten(), nn.Linear(6 * 8 * 8, 10))
    total, by_child = count_flops(model, torch.zeros(2, 4, 16, 16))
    conv = 2 * 4 * 6 * 5 * 5 * 8 * 8 * 2   # output 8x8, batch 2
    linear = 2 * 384 * 10 * 2
    assert by_child == {"0": conv, "2": linear} and total == conv + linear


def test_pspnet_flops_split_matches_hand_counts_of_the_heads():
    # resnet18 x0.25, 5 classes, 64x64 input: maps at 9x9 (64 -> 32 -> 17 -> 9), layer3 64
    # channels, layer4 128, head width 32
    config = {"arch": "resnet18", "num_classes": 5, "width_mult": 0.25, "stem": "deep"}
    f = network_flops(config, (1, 3, 64, 64))
    c = f["children"]
    hw = 9 * 9
    assert c["head"] == 2 * 32 * 5 * hw
    assert c["dsn"] == 2 * 64 * 32 * 9 * hw + 2 * 32 * 5 * hw == f["auxiliary_head"]
    pools = 2 * 128 * 32 * (1 + 4 + 9 + 36)         # the four 1x1 convs on the pooled bins
    bottleneck = 2 * (128 + 4 * 32) * 32 * 9 * hw     # 3x3 conv on the concatenation
    assert c["pspmodule"] == pools + bottleneck and f["decode_head"] == c["pspmodule"] + c["head"]
    # deep stem 3 -> 16 (stride 2) -> 16 -> 32, 3x3 convs, all at 32x32
    assert c["conv1"] + c["conv2"] + c["conv3"] == 2 * 9 * 32 * 32 * (3 * 16 + 16 * 16 + 16 * 32)
    assert f["deploy"] == f["train"] - f["auxiliary_head"]
    assert f["backbone"] + f["decode_head"] + f["auxiliary_head"] == f["train"]
    # the meta-device count equals a count on real tensors
    net = build_pspnet("resnet18", num_classes=5, width_mult=0.25).eval()
    assert count_flops(net, torch.zeros(1, 3, 64, 64))[0] == f["train"]


def test_peak_tensor_bytes_of_known_allocations():
    def fn():
        a = torch.empty(250_000)          # 1,000,000 bytes
        b = torch.empty(500_000)          # 2,000,000 more: peak 3,000,000
        del a, b
        c = torch.empty(100_000)          # 400,000 after both were freed
        return c.numel()

    peak = peak_tensor_bytes(fn)
    assert 3_000_000 <= peak < 3_000_000 + 4096


def test_time_forward_warms_up_then_times_each_call():
    calls = []
    times = time_forward(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeat=3)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)


def test_cli_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["--width-mult", "0.125", "--num-classes", "5", "--input-size", "64,64", "--warmup", "0",
                 "--repeat", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parameters" in printed and "FLOPs" in printed and "latency" in printed and "peak memory" in printed
    r = json.loads(out.read_text())
    assert r["logits_shape"] == [1, 5, 9, 9] and r["latency_s"]["repeat"] == 2
    net = build_pspnet("resnet18", num_classes=5, width_mult=0.125)
    assert r["params"]["total"] == sum(p.numel() for p in net.parameters())
    weights = 4 * (sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers()))
    assert r["peak_memory_bytes"] > weights + 4 * 3 * 64 * 64  # weights, input and some activations


def test_cli_refuses_cuda_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
