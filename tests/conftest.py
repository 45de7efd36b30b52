"""What many tests share: one tiny Cityscapes-layout dataset, one tiny-model factory, the
training flags as skd-train parses them, and a tiny training bundle built from those flags.
Also `load_script`, to import a file of scripts/ (not a package) as a module, and `bin_dir`."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture
def bin_dir(tmp_path):
    """A folder to put first on PATH, holding a `python` that runs this interpreter with its
    virtual environment, as the venv's bin/python does (a symlink to the interpreter elsewhere
    starts the base interpreter, without the installed skd). Tests add their stand-ins."""
    folder = tmp_path / "bin"
    folder.mkdir()
    shim = folder / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    return folder


@pytest.fixture(scope="session")
def load_script():
    """load_script("parity") -> scripts/parity.py, executed as the module `skd_script_parity`."""
    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"skd_script_{name}", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def cityscapes_dir(tmp_path_factory) -> Path:
    """The tiny dataset: synthetic street scenes in the Cityscapes layout, 8 train, 3 val and
    2 test images of 48x96, seed 0. Shared by the whole session: do not write into it."""
    from skd.data import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("cityscapes"), num_train=8, num_val=3, num_test=2,
                          height=48, width=96, seed=0)


@pytest.fixture(scope="session")
def tiny_net():
    """tiny_net(num_classes=5, width_mult=0.125, norm="bn", arch="resnet18", seed=None) -> PSPNet,
    seeded when `seed` is given."""
    from skd.models import build_pspnet

    def make(num_classes: int = 5, width_mult: float = 0.125, norm: str = "bn", arch: str = "resnet18",
             seed: int | None = None, **kwargs):
        if seed is not None:
            torch.manual_seed(seed)
        return build_pspnet(arch, num_classes=num_classes, width_mult=width_mult, norm=norm, **kwargs)
    return make


@pytest.fixture(scope="session")
def train_args():
    """train_args(*flags, teacher=True) -> skd-train's parsed flags (a data dir that need not
    exist, a teacher checkpoint path when `teacher`), the paper's terms resolved."""
    from skd.options import resolve_distill_defaults, train_parser

    def parse(*flags: str, teacher: bool = True):
        argv = ["--data-dir", "unused"] + (["--teacher-ckpt", "unused.pth"] if teacher else []) + list(flags)
        args = train_parser().parse_args(argv)
        resolve_distill_defaults(args)
        return args
    return parse


@pytest.fixture(scope="session")
def step_config(train_args):
    """step_config(*flags, world_size=1, teacher=True) -> StepConfig.from_args of those flags."""
    from skd.engine.steps import StepConfig

    def make(*flags: str, world_size: int = 1, teacher: bool = True):
        return StepConfig.from_args(train_args(*flags, teacher=teacher), world_size)
    return make


@pytest.fixture(scope="session")
def tiny_training(train_args, tiny_net):
    """tiny_training(*flags, norm="bn", num_classes=5, seed=0) -> (Training, StepConfig): a
    PSPNet-R18 x0.125 student (with the connectors its terms need), an R18 x0.25 teacher in eval
    mode and (with ho) the critic, with the optimizers skd-train builds from the flags."""
    from skd.engine.build import build_connectors, build_d_optimizer
    from skd.engine.steps import CriticLoss, DistillStudent, StepConfig, Training
    from skd.models import Discriminator

    def make(*flags: str, norm: str = "bn", num_classes: int = 5, seed: int = 0):
        args = train_args(*flags, "--num-classes", str(num_classes))
        cfg = StepConfig.from_args(args)
        net = tiny_net(num_classes, 0.125, norm, seed=seed)
        teacher = tiny_net(num_classes, 0.25).eval()
        teacher.requires_grad_(False)
        student = DistillStudent(net, build_connectors(net, teacher, cfg, norm))
        critic = CriticLoss(Discriminator(num_classes, ndf=args.adv_conv_dim), args.adv_loss_type) if cfg.ho else None
        opt_g = torch.optim.SGD(student.parameters(), lr=args.lr_g, momentum=args.momentum,
                                weight_decay=args.weight_decay)
        opt_d = build_d_optimizer(args, critic) if critic is not None else None
        return Training(student.net, student, teacher if cfg.distills else None, critic, opt_g, opt_d, None), cfg
    return make
