"""The training step: every setting comes from a flag, weights apart from values (doubling a
lambda doubles its weighted term only), the DDP factor sits beside its lambda, the critic's
optimizer and spectral norm are the original's, and one golden --pi --pa --ho step whose
terms and updates are checked in here guards the order and the scaling of the step."""
from __future__ import annotations

import copy
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from skd.engine.steps import StepConfig, train_step
from skd.engine.terms import TERMS
from skd.errors import SkdError
from skd.options import train_parser


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    image = 255 * torch.rand(2, 3, 33, 33, generator=gen)  # raw BGR 0..255
    label = torch.randint(0, 5, (2, 33, 33), generator=gen)
    label[:, :3] = 255
    return image, label


def run_step(models, cfg):
    image, label = batch()
    models.student.train()
    torch.manual_seed(2)  # dropout masks and the penalty's alpha
    return train_step(image, label, models=models, cfg=cfg)


def update_norm(module: torch.nn.Module, before: list[torch.Tensor]) -> float:
    return torch.sqrt(sum(((p.detach().double() - q.double()) ** 2).sum()
                          for p, q in zip(module.parameters(), before))).item()


# --- flags -> config -------------------------------------------------------------------------

def test_every_step_config_setting_is_a_flag_of_skd_train():
    dests = {action.dest for action in train_parser()._actions}
    assert set(StepConfig.flag_dests()) <= dests
    # Every StepConfig field is filled from flags: none has a default to fall back on.
    assert all(f.default is f.default_factory for f in fields(StepConfig))  # both MISSING


def test_a_setting_whose_flag_is_gone_fails_at_start_up_naming_it(train_args):
    args = train_args()
    del args.lambda_pa  # as if --lambda-pa had been renamed in the parser
    with pytest.raises(SkdError, match="no flag --lambda-pa"):
        StepConfig.from_args(args)


def test_weights_come_from_the_lambdas_and_the_ddp_factor_sits_beside_them(step_config):
    cfg = step_config("--lambda-pi", "3", "--lambda-pa", "0.25", "--lambda-d", "0.2", "--lambda-gp", "5",
                      world_size=4)
    assert cfg.terms == ("pi", "pa", "ho")
    assert cfg.weights["task"] == 1.0
    assert cfg.weights["pi"] == 3 * 4  # summed over the batch: times the ranks
    assert cfg.weights["pa"] == 0.25 and cfg.weights["ho"] == 0.2  # batch means: as they are
    assert cfg.weights["d_adv"] == 0.2 and cfg.weights["d_gp"] == pytest.approx(0.2 * 5)
    assert [t.name for t in TERMS if t.batch_summed] == ["pi"]


@pytest.mark.parametrize("flag, terms", [
    ("--lambda-pi", ["pi"]), ("--lambda-pa", ["pa"]), ("--lambda-d", ["ho", "d_adv", "d_gp"]),
    ("--lambda-gp", ["d_gp"]), ("--lambda-cwd", ["cwd"]), ("--lambda-dist", ["dist"]), ("--lambda-kd", ["kd"]),
    ("--lambda-at", ["at"]), ("--lambda-local", ["local"]), ("--lambda-ifvd", ["ifvd"]),
    ("--lambda-fitnet", ["fitnet"]),
])
def test_doubling_a_lambda_doubles_its_weighted_terms_and_leaves_every_raw_value(tiny_training, flag, terms):
    common = ("--cwd", "--cwd-on", "feat", "--dist", "--kd", "--at", "--local", "--ifvd", "--fitnet",
              "--d-input-size", "64")
    models, cfg = tiny_training(*common)
    assert set(models.raw_student.connectors) == {"cwd", "fitnet"}  # feat: 8 vs 16 channels; FitNet always
    base = run_step(models, cfg)
    default = float(train_parser().get_default(flag.lstrip("-").replace("-", "_")))
    doubled = run_step(*tiny_training(*common, flag, str(2 * default)))
    assert doubled.raw == base.raw  # the values do not depend on the weights
    for name, value in base.weighted.items():
        expected = 2 * value if name in terms else value
        assert doubled.weighted[name] == pytest.approx(expected, rel=1e-6), name


# --- one golden step -------------------------------------------------------------------------

# tiny_training() at seed 0 with the paper's --pi --pa --ho (defaults) and --d-input-size 64,
# on batch(): the step's unweighted terms, their weights' products, and the size of the update
# of the student (SGD) and of the critic (SGD), computed once and checked in.
GOLDEN_RAW = {"task": 2.3200950622558594, "pi": 3.2311925888061523, "pa": 0.05567708611488342,
              "ho": -0.06673242896795273, "d_adv": -0.002774156630039215, "d_gp": 0.8447011709213257}
GOLDEN_UPDATE = {"student": 3.5212345809686667, "critic": 0.0004549021299092779}


def test_golden_distillation_step(tiny_training):
    models, cfg = tiny_training("--d-input-size", "64")
    assert cfg.terms == ("pi", "pa", "ho")
    student0 = [p.detach().clone() for p in models.student.parameters()]
    critic0 = [p.detach().clone() for p in models.critic.parameters()]
    result = run_step(models, cfg)
    assert result.raw == pytest.approx(GOLDEN_RAW, rel=1e-4, abs=1e-8)
    # weights: lambda_pi 10, lambda_pa 0.5, lambda_d 0.1 (G and D), lambda_d * lambda_gp = 1
    expected = {"task": 1, "pi": 10, "pa": 0.5, "ho": 0.1, "d_adv": 0.1, "d_gp": 1.0}
    assert result.weighted == pytest.approx({k: expected[k] * v for k, v in GOLDEN_RAW.items()}, rel=1e-4, abs=1e-8)
    assert result.loss == pytest.approx(sum(result.weighted[k] for k in cfg.student_terms), rel=1e-6)
    assert update_norm(models.student, student0) == pytest.approx(GOLDEN_UPDATE["student"], rel=1e-3)
    assert update_norm(models.critic, critic0) == pytest.approx(GOLDEN_UPDATE["critic"], rel=1e-3)


def test_the_critic_trains_with_the_originals_sgd_and_adam_on_request(tiny_training):
    models, _ = tiny_training("--d-input-size", "64")
    opt = models.opt_d
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["lr"] == 4e-4 and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    models, _ = tiny_training("--d-input-size", "64", "--d-optimizer", "adam")
    assert isinstance(models.opt_d, torch.optim.Adam)
    assert models.opt_d.defaults["betas"] == (0.9, 0.99) and models.opt_d.defaults["weight_decay"] == 0


def test_the_sgd_critic_moves_far_less_than_adam_in_one_step(tiny_training):
    """What the audit measured: Adam's first step is about lr in every parameter, SGD's is lr
    times the (small) gradient."""
    moved = {}
    for name in ("sgd", "adam"):
        models, cfg = tiny_training("--d-input-size", "64", "--d-optimizer", name)
        before = [p.detach().clone() for p in models.critic.parameters()]
        run_step(models, cfg)
        moved[name] = update_norm(models.critic, before)
    assert moved["sgd"] < moved["adam"] / 10


# --- the discriminator's spectral norm ----------------------------------------------------------

def test_spectral_norm_is_the_originals_power_iteration():
    from skd.models.discriminator import spectral_norm
    torch.manual_seed(0)
    conv = spectral_norm(torch.nn.Conv2d(3, 4, 4, stride=2, padding=1))
    sn = conv.parametrizations.weight
    w = sn.original.detach().clone()
    u, v = sn[0]._u.clone(), sn[0]._v.clone()
    mat = w.view(4, -1)

    def l2(x):  # the original's l2normalize: x / (||x|| + eps), networks/spectral.py line 11
        return x / (x.norm() + 1e-12)

    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        # The original's _update_u_v (networks/spectral.py lines 23-35): v first, then u.
        v = l2(mat.t() @ u)
        u = l2(mat @ v)
        sigma = u @ (mat @ v)
        expected = F.conv2d(x, w / sigma, conv.bias, stride=2, padding=1)
        assert torch.allclose(conv(x), expected, rtol=1e-5, atol=1e-6)
    # torch's order (u first, then v) gives other vectors from the same start.
    u_t = l2(mat @ sn[0]._v)
    v_t = l2(mat.t() @ u_t)
    assert not torch.allclose(v_t, sn[0]._v)


def test_spectral_norm_keeps_the_state_dict_keys_and_needs_no_warm_up():
    from skd.models import Discriminator
    keys = [k for k in Discriminator(19).state_dict() if k.startswith("conv1.")]
    assert keys == ["conv1.0.bias", "conv1.0.parametrizations.weight.original",
                    "conv1.0.parametrizations.weight.0._u", "conv1.0.parametrizations.weight.0._v"]
    torch.manual_seed(3)
    disc = Discriminator(4, ndf=8)
    sn = disc.conv1[0].parametrizations.weight[0]
    assert torch.linalg.vector_norm(sn._u).item() == pytest.approx(1.0, rel=1e-6)
    # u is the normalised N(0, 1) draw itself: no warm-up iterations at construction.
    torch.manual_seed(3)
    torch.nn.Conv2d(4, 8, 4, stride=2, padding=1)  # the same draws for the conv's own weights
    draw = torch.empty(8).normal_(0, 1)
    assert torch.allclose(sn._u, draw / (draw.norm() + 1e-12))


def test_copying_a_config_keeps_it_frozen(step_config):
    cfg = step_config()
    with pytest.raises(Exception):
        cfg.terms = ()  # type: ignore[misc]
    assert copy.deepcopy(cfg) == cfg


# --- any teacher with any student ---------------------------------------------------------------

def test_teacher_maps_of_another_size_are_resized_to_the_students():
    from skd.engine.terms import TermInputs
    from skd.models import PSPNetOutput

    def out(size: int, channels: int) -> PSPNetOutput:
        maps = {f: torch.randn(1, channels, size, size) for f in PSPNetOutput._fields}
        return PSPNetOutput(**maps)

    s, t = out(9, 4), out(5, 4)
    for align in (True, False):
        x = TermInputs(s, t, torch.zeros(1, 9, 9, dtype=torch.long), {}, None, {}, align)
        s_map, t_map = x.maps("kd", "logits")
        assert s_map is s.logits
        assert torch.equal(t_map, F.interpolate(t.logits, size=(9, 9), mode="bilinear", align_corners=align))
    same = TermInputs(s, out(9, 4), None, {}, None, {})
    assert same.maps("kd", "logits")[1] is same.t.logits  # no resize when the sizes agree


def test_a_teacher_of_other_classes_is_refused_before_the_first_step(tiny_net):
    from skd.engine.build import check_pair
    check_pair(tiny_net(5), tiny_net(5, 0.25))
    with pytest.raises(SkdError, match=r"teacher resnet18 \(width 0.25, 7 classes\) predicts 7 classes and the "
                                       r"student resnet18 \(width 0.125, 5 classes\) 5"):
        check_pair(tiny_net(5), tiny_net(7, 0.25))
