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

from skd.engine.runtime import autocast_factory
from skd.engine.steps import CriticLoss, DistillStudent, StepConfig, train_step
from skd.models import Discriminator, build_pspnet
from skd.train import compile_forwards

CFG = StepConfig(pi=True, pa=True, pa_node_size=2, ho=True, d_input_size=64, kd=True)
CPU = torch.device("cpu")


def build(norm: str = "bn") -> tuple[DistillStudent, torch.nn.Module, CriticLoss]:
    torch.manual_seed(0)
    student = DistillStudent(build_pspnet("resnet18", num_classes=5, width_mult=0.125, norm=norm))
    teacher = build_pspnet("resnet18", num_classes=5, width_mult=0.25).eval()
    critic = CriticLoss(Discriminator(5))
    return student, teacher, critic


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 33, 33, generator=gen) * 50
    label = torch.randint(0, 5, (2, 33, 33), generator=gen)
    return image, label


def step(models, image, label, amp="off", scaler=None) -> dict[str, float]:
    student, teacher, critic = models
    student.train()
    opt_g = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    opt_d = torch.optim.Adam(critic.parameters(), lr=4e-4, betas=(0.9, 0.99))
    torch.manual_seed(5)  # the same dropout masks and penalty mixing in every run
    return train_step(image, label, student, opt_g, CFG, teacher, critic, opt_d, scaler, autocast_factory(amp, CPU))


def updates(before: torch.nn.Module, after: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(b - a).flatten() for a, b in zip(before.parameters(), after.parameters())])


def last_layers(student: DistillStudent) -> list[str]:
    """The classifiers' final convolutions (main head and auxiliary head)."""
    convs = [n for n, m in student.named_modules() if isinstance(m, torch.nn.Conv2d)]
    return [n for n in convs if n.startswith("net.head.")][-1:] + [n for n in convs if n.startswith("net.dsn.")][-1:]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_step_is_close_to_float32(amp):
    image, label = batch()
    start = build()
    ref, mixed = copy.deepcopy(start), copy.deepcopy(start)
    want = step(ref, image, label)
    # fp16: GradScaler as skd-train makes it, with a first scale low enough not to overflow
    # these gradients (at 65536 the first step is skipped and the scale backed off, as designed).
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0) if amp == "fp16" else None
    got = step(mixed, image, label, amp, scaler)

    assert set(got) == set(want) == {"task", "pi", "pa", "ho", "kd", "d_adv", "d_gp"}
    # Half-precision convolutions, float32 losses: each term within a few per cent.
    for k in ("task", "pi", "kd"):
        assert got[k] == pytest.approx(want[k], rel=0.05), k
    # Weights stay float32; the teacher does not move.
    assert all(p.dtype == torch.float32 for m in mixed for p in m.parameters())
    assert all(torch.equal(a, b) for a, b in zip(start[1].parameters(), mixed[1].parameters()))
    # The update of the classifiers points the way float32's does. Deeper down the gradient
    # has gone through many half-precision backward convolutions and, at initialisation, keeps
    # less of its direction (cosine 0.6-0.8 at the first convolution here), so the whole update
    # is held to a looser bound; scripts/parity.py shows that training reaches the same mIoU.
    names = dict(start[0].named_parameters())
    ref_p, mix_p = dict(ref[0].named_parameters()), dict(mixed[0].named_parameters())
    for layer in last_layers(start[0]):
        key = layer + ".weight"
        cos = F.cosine_similarity((ref_p[key] - names[key]).flatten(), (mix_p[key] - names[key]).flatten(), dim=0)
        assert cos > 0.99, (key, cos)
    assert F.cosine_similarity(updates(start[0], ref[0]), updates(start[0], mixed[0]), dim=0) > 0.5
    if scaler is not None:
        assert scaler.get_scale() == 256.0  # no inf/NaN gradient: the step was taken, the scale kept
        assert not torch.equal(updates(start[0], mixed[0]), torch.zeros_like(updates(start[0], mixed[0])))


def test_channels_last_step_matches_contiguous_and_keeps_the_layout():
    image, label = batch()
    start = build()
    ref, cl = copy.deepcopy(start), copy.deepcopy(start)
    cl[0].to(memory_format=torch.channels_last)
    cl[1].to(memory_format=torch.channels_last)
    want = step(ref, image, label)
    got = step(cl, image.contiguous(memory_format=torch.channels_last), label)

    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    moved_ref, moved_cl = updates(start[0], ref[0]), updates(start[0], cl[0])
    assert (moved_ref - moved_cl).abs().max() <= 1e-3 * moved_ref.abs().max() + 1e-7
    # Adam's first step is about lr * sign(gradient): where a gradient is near zero, reordering
    # noise can flip it, so the critic's update is compared by direction.
    assert F.cosine_similarity(updates(start[2], ref[2]), updates(start[2], cl[2]), dim=0) > 0.99
    convs = [m.weight for m in cl[0].modules() if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


@pytest.mark.slow  # inductor compiles C++ for every graph: ~1-2 min a case on 2 cores
@pytest.mark.parametrize("norm", ["bn", "inplace_abn"])
def test_compiled_step_and_eval_match_eager(norm):
    torch._dynamo.reset()
    # Inductor draws its own random numbers (here: the head's dropout) unless told to use eager's.
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        compare_compiled_with_eager(norm)


def compare_compiled_with_eager(norm: str) -> None:
    image, label = batch()
    label[:, :4] = 255  # some ignored pixels too
    eager = build(norm)
    start = copy.deepcopy(eager[0].state_dict())
    compiled = copy.deepcopy(eager)
    compile_forwards(compiled[0], compiled[1])

    want = step(eager, image, label)
    got = step(compiled, image, label)
    assert set(got) == set(want) == {"task", "pi", "pa", "ho", "kd", "d_adv", "d_gp"}
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    # What the step changed (SGD update, BatchNorm statistics) agrees to float32 reordering noise.
    for (name, a), b in zip(eager[0].state_dict().items(), compiled[0].state_dict().values()):
        if not a.is_floating_point():
            assert torch.equal(a, b), name
            continue
        moved_a, moved_b = a - start[name], b - start[name]
        scale = moved_a.abs().max().item()
        assert (moved_a - moved_b).abs().max().item() <= 1e-3 * scale + 1e-7, name

    eager[0].eval()
    compiled[0].eval()
    with torch.no_grad():
        a, b = eager[0].net(image).logits, compiled[0].net(image).logits
    err, scale = (a - b).abs().max().item(), a.abs().max().item()
    assert err <= 1e-4 * scale, (err, scale)
