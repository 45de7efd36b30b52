"""One training step, supervised or distilled, readable top to bottom.

The G step (student) and then, with ho, the D step (discriminator) follow the original SKD
training step (networks/kd_model.py, lines 119-173; docs/reproduction.md gives the order and the
scaling). Every term is computed unweighted, then weighed from one dict (`StepConfig.weights`),
and both values are returned, so the logs keep each term's value whatever its lambda.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from skd.engine.terms import CRITIC_TERMS, TERMS, TERMS_BY_NAME, TermInputs, d_input
from skd.errors import SkdError
from skd.losses import discriminator_loss, gradient_penalty, task_loss
from skd.models import PSPNetOutput
from skd.models.convention import SKD_INPUT, InputSpec
from skd.parallel import process_group_active


@dataclass(frozen=True)
class StepConfig:
    """What one step computes, built from the flags by `from_args` (and only from them).

    terms:   the active distillation terms, in skd.engine.terms.TERMS order;
    weights: the coefficient of every logged term ("task", each term, "d_adv", "d_gp");
    params:  every term's hyper-parameters, by flag dest (e.g. "pool_scale");
    aux_weight, ohem_thresh (None: plain cross-entropy), ohem_keep: the task loss;
    adv_loss_type: the critic's objective; world_size: ranks of the process group.
    """

    terms: tuple[str, ...]
    weights: Mapping[str, float]
    params: Mapping[str, Any]
    aux_weight: float
    ohem_thresh: float | None
    ohem_keep: int
    adv_loss_type: str
    world_size: int

    # Flags the config reads besides the terms' own (switch, lambda, hyper-parameters).
    CORE_FLAGS = ("aux_weight", "ohem", "ohem_thresh", "ohem_keep")

    @classmethod
    def flag_dests(cls) -> list[str]:
        """Every flag dest `from_args` reads: each must be a flag of skd-train."""
        dests = list(cls.CORE_FLAGS)
        for term in TERMS:
            dests += [term.name, term.weight.dest] + [f.dest for f in term.params]
        return dests

    @classmethod
    def from_args(cls, args: Any, world_size: int = 1) -> "StepConfig":
        """The config of the parsed flags; SkdError naming a dest the flags lack (a flag renamed or
        removed must fail here, not train at some default)."""
        missing = [d for d in cls.flag_dests() if not hasattr(args, d)]
        if missing:
            raise SkdError(f"step config: no flag --{missing[0].replace('_', '-')} in the parsed arguments "
                           f"({len(missing)} missing); every StepConfig setting must come from a flag")
        terms = tuple(t.name for t in TERMS if getattr(args, t.name))
        weights = {"task": 1.0, "d_adv": args.lambda_d, "d_gp": args.lambda_d * args.lambda_gp}
        for t in TERMS:
            weights[t.name] = getattr(args, t.weight.dest) * (world_size if t.batch_summed else 1)
        params = {f.dest: getattr(args, f.dest) for t in TERMS for f in t.params}
        return cls(terms=terms, weights=weights, params=params, aux_weight=args.aux_weight,
                   ohem_thresh=args.ohem_thresh if args.ohem else None, ohem_keep=args.ohem_keep,
                   adv_loss_type=args.adv_loss_type, world_size=world_size)

    @property
    def distills(self) -> bool:
        return bool(self.terms)

    @property
    def ho(self) -> bool:
        return "ho" in self.terms

    @property
    def student_terms(self) -> tuple[str, ...]:
        """The terms that enter the student's loss, in order: the list the logged total sums."""
        return ("task",) + self.terms


@dataclass
class StepResult:
    """raw: each term's unweighted value; weighted: as it entered its loss (weight x raw; the
    task under DDP also carries its valid-pixel share). loss: the student's total."""

    raw: dict[str, float]
    weighted: dict[str, float]
    loss: float = field(default=0.0)


class DistillStudent(nn.Module):
    """The student network plus the connectors of the terms that map its maps to the teacher's
    channels, as one module for DDP (so every trained parameter is used inside its forward).

    connectors: term name -> (the output it reads, the connector module).
    """

    def __init__(self, net: nn.Module, connectors: Mapping[str, tuple[str, nn.Module]] | None = None):
        super().__init__()
        self.net = net
        self.reads = {name: feature for name, (feature, _) in (connectors or {}).items()}
        self.connectors = nn.ModuleDict({name: module for name, (_, module) in (connectors or {}).items()})

    def forward(self, x: torch.Tensor) -> tuple[PSPNetOutput, dict[str, torch.Tensor]]:
        out = self.net(x)
        return out, {name: c(getattr(out, self.reads[name])) for name, c in self.connectors.items()}


class CriticLoss(nn.Module):
    """The discriminator's unweighted terms in one forward, so DDP sees one forward per backward.

    forward(teacher_logits, student_logits) -> {"d_adv": objective, "d_gp": gradient penalty}
    (the penalty with wgan-gp only); the step weighs them with StepConfig.weights.
    """

    def __init__(self, disc: nn.Module, kind: str):
        super().__init__()
        self.disc = disc
        self.kind = kind

    def forward(self, t_logits: torch.Tensor, s_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"d_adv": discriminator_loss(self.disc(t_logits), self.disc(s_logits), self.kind)}
        if self.kind == "wgan-gp":
            terms["d_gp"] = gradient_penalty(self.disc, t_logits, s_logits)
        return terms


@dataclass
class Training:
    """What a run trains: built by skd.engine.build.build_training."""

    net: nn.Module                  # the student network
    student: nn.Module              # DistillStudent (net + connectors), or its DDP wrapper
    teacher: nn.Module | None       # eval mode, frozen; None without distillation
    critic: nn.Module | None        # CriticLoss (or its DDP wrapper), with ho
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler | None  # --amp fp16 only

    @property
    def raw_student(self) -> DistillStudent:
        return _unwrap(self.student)

    @property
    def raw_critic(self) -> CriticLoss | None:
        return _unwrap(self.critic) if self.critic is not None else None


class NonFiniteLoss(RuntimeError):
    """A loss term went NaN/Inf; the message names the term."""


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


def _float_maps(out: PSPNetOutput, names: set[str]) -> PSPNetOutput:
    """The maps the losses read in float32 whatever the autocast dtype: the softmaxes and graphs
    need the range."""
    return out._replace(**{n: getattr(out, n).float() for n in names})


def train_step(image: torch.Tensor, label: torch.Tensor, *, models: Training, cfg: StepConfig,
               autocast=contextlib.nullcontext, channels_last: bool = False) -> StepResult:
    """One G step (and D step with ho). image (B, 3, H, W) raw BGR 0..255 (NaN where padded),
    label (B, H, W) class ids, 255 ignored; each network normalises the image its own way.

    Raises NonFiniteLoss when a term, the critic's included, is NaN/Inf on any rank; the models
    are then exactly as before the call: no optimizer has stepped, and the buffers the forward
    passes updated (BatchNorm running statistics, the critic's spectral-norm vectors) are restored.
    """
    student, teacher, critic = models.raw_student, models.teacher, models.critic
    saved = [(b, b.clone()) for m in (student, models.raw_critic) if m is not None for b in m.buffers()]
    reads = {"logits", "aux_logits"} | {_read(n, cfg) for n in cfg.terms}

    # Forward passes: the teacher in eval mode without a graph, then the student.
    s_input = _prepare(student.net, image, channels_last)
    t = None
    if cfg.distills:
        same = input_spec(teacher) == input_spec(student.net)
        with torch.no_grad(), autocast():
            t = _float_maps(teacher(s_input if same else _prepare(teacher, image, channels_last)), reads)
    with autocast():
        s, projected = models.student(s_input)
    s = _float_maps(s, reads)
    projected = {k: v.float() for k, v in projected.items()}

    # The student's terms, unweighted, then weighed.
    align = input_spec(student.net).align_corners
    raw = {"task": task_loss(s.logits, s.aux_logits, label, aux_weight=cfg.aux_weight,
                             ohem_thresh=cfg.ohem_thresh, ohem_min_kept=cfg.ohem_keep, align_corners=align)}
    inputs = TermInputs(s, t, label, projected, models.raw_critic, cfg.params, align)
    for name in cfg.terms:
        raw[name] = TERMS_BY_NAME[name].compute(inputs)
    weighted = {k: cfg.weights[k] * v for k, v in raw.items()}
    if cfg.world_size > 1:
        weighted["task"] = weighted["task"] * _valid_pixel_share(label, cfg.world_size)

    # The critic's terms read this forward's detached student logits and D as it is, so they
    # equal the original's (computed after the G step) and can be checked before any update.
    d_raw: dict[str, torch.Tensor] = {}
    if cfg.ho:
        size = cfg.params["d_input_size"]
        d_raw = critic(d_input(t.logits, size), d_input(s.logits.detach(), size))
    d_weighted = {k: cfg.weights[k] * v for k, v in d_raw.items()}
    try:
        _check_finite({**weighted, **d_weighted}, image.device)
    except NonFiniteLoss:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)
        raise

    models.opt_g.zero_grad(set_to_none=True)
    loss = sum(weighted.values())
    if models.scaler is not None:
        models.scaler.scale(loss).backward()
        models.scaler.step(models.opt_g)
        models.scaler.update()
    else:
        loss.backward()
        models.opt_g.step()

    if cfg.ho:
        models.opt_d.zero_grad(set_to_none=True)
        sum(d_weighted.values()).backward()
        models.opt_d.step()
    raw.update(d_raw)
    weighted.update(d_weighted)
    return StepResult(raw={k: v.item() for k, v in raw.items()}, weighted={k: v.item() for k, v in weighted.items()},
                      loss=loss.item())


def _read(name: str, cfg: StepConfig) -> str:
    feature = TERMS_BY_NAME[name].feature
    return feature(cfg.params) if feature is not None else "logits"


def input_spec(net: nn.Module) -> InputSpec:
    """How `net` wants its input (`net.input_spec`; the original's convention when it has none)."""
    return getattr(net, "input_spec", SKD_INPUT)


def _prepare(net: nn.Module, image: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The raw batch normalised the way `net` expects (its input_spec), channels-last if asked."""
    x = input_spec(net).normalize(image)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _valid_pixel_share(label: torch.Tensor, world_size: int) -> torch.Tensor:
    """local valid pixels * world_size / global valid pixels.

    The cross-entropy is a mean over the non-ignored pixels. Ranks with more ignored pixels
    would weigh more under DDP's gradient average; this factor makes the average equal the
    mean over the global batch, as in one process.
    """
    local = (label != 255).sum().to(torch.float64)
    total = local.clone()
    torch.distributed.all_reduce(total)
    return (local * world_size / total.clamp(min=1)).float()


def _check_finite(terms: dict[str, torch.Tensor], device: torch.device) -> None:
    """Raise NonFiniteLoss naming the first bad term; agreed over ranks so none goes on alone."""
    finite = torch.stack([torch.isfinite(v.detach()).all() for v in terms.values()]).to(device)
    if process_group_active():
        flags = finite.int()
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        finite = flags.bool()
    if not bool(finite.all()):
        names = [k for k, ok in zip(terms, finite.tolist()) if not ok]
        raise NonFiniteLoss(f"loss term {names[0]!r} is not finite")


__all__ = ["CRITIC_TERMS", "CriticLoss", "DistillStudent", "NonFiniteLoss", "StepConfig", "StepResult",
           "Training", "train_step"]
