"""The speed switches on a real distillation step (--pi --pa --ho --kd, D step included):
--amp bf16 and fp16 (with GradScaler) stay close to float32 and keep float32 weights and losses;
--channels-last gives the contiguous step and keeps the weights channels-last; --compile (the
torch.compile'd forwards) gives the eager step and evaluation, with BatchNorm and with
InPlace-ABN (whose extension ops break the graph)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from skd.engine.build import compile_forwards
from skd.engine.runtime import autocast_factory
from skd.engine.steps import input_spec, train_step

FLAGS = ("--pa-node-size", "2", "--d-input-size", "64", "--kd")  # with the paper's pi, pa, ho
CPU = torch.device("cpu")
TERMS = {"task", "pi", "pa", "ho", "kd", "d_adv", "d_gp"}


@pytest.fixture
def build(tiny_training):
    """build(norm) -> (Training, StepConfig) of FLAGS, the same initial weights every time."""
    return lambda norm="bn": tiny_training(*FLAGS, norm=norm)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    image = 110 + torch.randn(2, 3, 33, 33, generator=gen) * 50  # raw BGR-like values
    label = torch.randint(0, 5, (2, 33, 33), generator=gen)
    return image, label


def step(start, image, label, amp="off", scaler=None, channels_last=False) -> dict[str, float]:
    models, cfg = start
    models.scaler = scaler
    models.student.train()
    torch.manual_seed(5)  # the same dropout masks and penalty mixing in every run
    return train_step(image, label, models=models, cfg=cfg, autocast=autocast_factory(amp, CPU),
                      channels_last=channels_last).weighted


def updates(before: torch.nn.Module, after: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(b - a).flatten() for a, b in zip(before.parameters(), after.parameters())])


def last_layers(student) -> list[str]:
    """The classifiers' final convolutions (main head and auxiliary head)."""
    convs = [n for n, m in student.named_modules() if isinstance(m, torch.nn.Conv2d)]
    return [n for n in convs if n.startswith("net.head.")][-1:] + [n for n in convs if n.startswith("net.dsn.")][-1:]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_step_is_close_to_float32(amp, build):
    image, label = batch()
    start = build()
    ref, mixed = copy.deepcopy(start), copy.deepcopy(start)
    want = step(ref, image, label)
    # fp16: GradScaler as skd-train makes it, with a first scale low enough not to overflow
    # these gradients (at 65536 the first step is skipped and the scale backed off, as designed).
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0) if amp == "fp16" else None
    got = step(mixed, image, label, amp, scaler)

    assert set(got) == set(want) == TERMS
    # Half-precision convolutions, float32 losses: each term within a few per cent.
    for k in ("task", "pi", "kd"):
        assert got[k] == pytest.approx(want[k], rel=0.05), k
    # Weights stay float32; the teacher does not move.
    nets = (mixed[0].student, mixed[0].teacher, mixed[0].critic)
    assert all(p.dtype == torch.float32 for m in nets for p in m.parameters())
    assert all(torch.equal(a, b) for a, b in zip(start[0].teacher.parameters(), mixed[0].teacher.parameters()))
    # The update of the classifiers points the way float32's does. Deeper down the gradient
    # has gone through many half-precision backward convolutions and, at initialisation, keeps
    # less of its direction (cosine 0.6-0.8 at the first convolution here), so the whole update
    # is held to a looser bound; scripts/parity.py shows that training reaches the same mIoU.
    names = dict(start[0].student.named_parameters())
    ref_p, mix_p = dict(ref[0].student.named_parameters()), dict(mixed[0].student.named_parameters())
    for layer in last_layers(start[0].student):
        key = layer + ".weight"
        cos = F.cosine_similarity((ref_p[key] - names[key]).flatten(), (mix_p[key] - names[key]).flatten(), dim=0)
        assert cos > 0.99, (key, cos)
    s0, s_ref, s_mixed = start[0].student, ref[0].student, mixed[0].student
    assert F.cosine_similarity(updates(s0, s_ref), updates(s0, s_mixed), dim=0) > 0.5
    if scaler is not None:
        assert scaler.get_scale() == 256.0  # no inf/NaN gradient: the step was taken, the scale kept
        assert not torch.equal(updates(s0, s_mixed), torch.zeros_like(updates(s0, s_mixed)))


def test_channels_last_step_matches_contiguous_and_keeps_the_layout(build):
    image, label = batch()
    start = build()
    ref, cl = copy.deepcopy(start), copy.deepcopy(start)
    cl[0].student.to(memory_format=torch.channels_last)
    cl[0].teacher.to(memory_format=torch.channels_last)
    want = step(ref, image, label)
    got = step(cl, image, label, channels_last=True)

    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    for name in ("student", "critic"):
        a, b, c = (getattr(m[0], name) for m in (start, ref, cl))
        moved_ref, moved_cl = updates(a, b), updates(a, c)
        assert (moved_ref - moved_cl).abs().max() <= 1e-3 * moved_ref.abs().max() + 1e-7, name
    convs = [m.weight for m in cl[0].student.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


@pytest.mark.slow  # inductor compiles C++ for every graph: ~1-2 min a case on 2 cores
@pytest.mark.parametrize("norm", ["bn", "inplace_abn"])
def test_compiled_step_and_eval_match_eager(norm, build):
    torch._dynamo.reset()
    # Inductor draws its own random numbers (here: the head's dropout) unless told to use eager's.
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        compare_compiled_with_eager(build(norm))


def compare_compiled_with_eager(eager) -> None:
    image, label = batch()
    label[:, :4] = 255  # some ignored pixels too
    start = copy.deepcopy(eager[0].student.state_dict())
    compiled = copy.deepcopy(eager)
    compile_forwards(compiled[0])

    want = step(eager, image, label)
    got = step(compiled, image, label)
    assert compiled[0].net.forward.compiled is not None, "the compilation failed and fell back to eager"
    assert set(got) == set(want) == TERMS
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    # What the step changed (SGD update, BatchNorm statistics) agrees to float32 reordering noise.
    for (name, a), b in zip(eager[0].student.state_dict().items(), compiled[0].student.state_dict().values()):
        if not a.is_floating_point():
            assert torch.equal(a, b), name
            continue
        moved_a, moved_b = a - start[name], b - start[name]
        scale = moved_a.abs().max().item()
        assert (moved_a - moved_b).abs().max().item() <= 1e-3 * scale + 1e-7, name

    eager[0].net.eval()
    compiled[0].net.eval()
    x = input_spec(eager[0].net).normalize(image)
    with torch.no_grad():
        a, b = eager[0].net(x).logits, compiled[0].net(x).logits
    err, scale = (a - b).abs().max().item(), a.abs().max().item()
    assert err <= 1e-4 * scale, (err, scale)
