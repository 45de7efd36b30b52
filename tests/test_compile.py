"""--compile: the torch.compile'd forwards give the eager training step (terms, updated weights,
BatchNorm statistics) and the eager evaluation, with BatchNorm and with InPlace-ABN (whose
extension ops break the graph)."""
from __future__ import annotations

import copy

import pytest
import torch

from skd.engine.steps import DistillStudent, StepConfig, train_step
from skd.models import build_pspnet
from skd.train import compile_forwards

pytestmark = pytest.mark.slow  # inductor compiles C++ for every graph: ~30 s a case on 2 cores


def models(norm: str) -> tuple[DistillStudent, torch.nn.Module]:
    torch.manual_seed(0)
    student = DistillStudent(build_pspnet("resnet18", num_classes=5, width_mult=0.125, norm=norm))
    teacher = build_pspnet("resnet18", num_classes=5, width_mult=0.25).eval()
    return student, teacher


def one_step(student, teacher, image, label) -> dict[str, float]:
    torch.manual_seed(5)  # the same dropout masks in both runs
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    cfg = StepConfig(pi=True, pa=True, pa_node_size=2, kd=True)
    return train_step(image, label, student, opt, cfg, teacher)


@pytest.mark.parametrize("norm", ["bn", "inplace_abn"])
def test_compiled_step_and_eval_match_eager(norm):
    torch._dynamo.reset()
    # Inductor draws its own random numbers (here: the head's dropout) unless told to use eager's.
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        compare_compiled_with_eager(norm)


def compare_compiled_with_eager(norm: str) -> None:
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 33, 33, generator=gen) * 50
    label = torch.randint(0, 5, (2, 33, 33), generator=gen)
    label[:, :4] = 255

    eager_s, eager_t = models(norm)
    start = copy.deepcopy(eager_s.state_dict())
    compiled_s, compiled_t = copy.deepcopy(eager_s), copy.deepcopy(eager_t)
    compile_forwards(compiled_s, compiled_t)
    eager_s.train()
    compiled_s.train()

    want = one_step(eager_s, eager_t, image, label)
    got = one_step(compiled_s, compiled_t, image, label)
    assert set(got) == {"task", "pi", "pa", "kd"}
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    # What the step changed (SGD update, BatchNorm statistics) agrees to float32 reordering noise.
    for (name, a), b in zip(eager_s.state_dict().items(), compiled_s.state_dict().values()):
        if not a.is_floating_point():
            assert torch.equal(a, b), name
            continue
        moved_a, moved_b = a - start[name], b - start[name]
        scale = moved_a.abs().max().item()
        assert (moved_a - moved_b).abs().max().item() <= 1e-3 * scale + 1e-7, name

    eager_s.eval()
    compiled_s.eval()
    with torch.no_grad():
        a, b = eager_s.net(image).logits, compiled_s.net(image).logits
    err, scale = (a - b).abs().max().item(), a.abs().max().item()
    assert err <= 1e-4 * scale, (err, scale)
