"""One training step, supervised or distilled, readable top to bottom.

Read by `skd.train`. The G step (student) and then, with --ho, the D step (discriminator)
follow the original SKD training step; SPEC.md §2 gives the order and the scaling.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from skd.losses import (channel_wise_loss, discriminator_loss, dist_loss, generator_loss,
                        gradient_penalty, kd_loss, pair_wise_loss, pixel_wise_loss, task_loss)
from skd.models import PSPNetOutput


@dataclass(frozen=True)
class StepConfig:
    """The loss switches and weights of one step (built from the flags by `from_args`)."""
    aux_weight: float = 0.4
    ohem_thresh: float | None = None
    ohem_keep: int = 100000
    pi: bool = False
    lambda_pi: float = 10.0
    pi_temperature: float = 1.0
    pa: bool = False
    lambda_pa: float = 0.5
    pool_scale: float = 0.5
    pa_node_size: int | None = None
    pa_pool: str = "max"
    ho: bool = False
    lambda_d: float = 0.1
    lambda_gp: float = 10.0
    adv_loss_type: str = "wgan-gp"
    d_input_size: int = 0
    cwd: bool = False
    lambda_cwd: float = 3.0
    cwd_tau: float = 4.0
    cwd_on: str = "logits"
    dist: bool = False
    lambda_dist: float = 1.0
    dist_beta: float = 1.0
    dist_gamma: float = 1.0
    dist_tau: float = 1.0
    kd: bool = False
    lambda_kd: float = 1.0
    kd_temperature: float = 4.0
    world_size: int = 1

    @classmethod
    def from_args(cls, args, world_size: int = 1) -> "StepConfig":
        fields = {k: getattr(args, k) for k in cls.__dataclass_fields__ if hasattr(args, k)}
        fields["ohem_thresh"] = args.ohem_thresh if args.ohem else None
        fields["world_size"] = world_size
        return cls(**fields)

    @property
    def distills(self) -> bool:
        return self.pi or self.pa or self.ho or self.cwd or self.dist or self.kd


class DistillStudent(nn.Module):
    """The student network plus the optional CWD feature connector, as one module for DDP."""

    def __init__(self, net: nn.Module, connector: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.connector = connector

    def forward(self, x: torch.Tensor) -> tuple[PSPNetOutput, torch.Tensor | None]:
        out = self.net(x)
        return out, (self.connector(out.feat) if self.connector is not None else None)


class CriticLoss(nn.Module):
    """The discriminator's whole loss in one forward, so DDP sees one forward per backward.

    forward(teacher_logits, student_logits) -> (loss, terms): loss = lambda_d * objective +
    lambda_d * lambda_gp * gradient penalty (the penalty with wgan-gp only).
    """

    def __init__(self, disc: nn.Module, kind: str = "wgan-gp", lambda_d: float = 0.1, lambda_gp: float = 10.0):
        super().__init__()
        self.disc = disc
        self.kind = kind
        self.lambda_d = lambda_d
        self.lambda_gp = lambda_gp

    def forward(self, t_logits: torch.Tensor, s_logits: torch.Tensor) -> tuple[torch.Tensor, dict]:
        d_student = self.disc(s_logits)
        d_teacher = self.disc(t_logits)
        terms = {"d_adv": self.lambda_d * discriminator_loss(d_teacher, d_student, self.kind)}
        if self.kind == "wgan-gp":
            terms["d_gp"] = self.lambda_d * self.lambda_gp * gradient_penalty(self.disc, t_logits, s_logits)
        return sum(terms.values()), terms


class NonFiniteLoss(RuntimeError):
    """A loss term went NaN/Inf; the message names the term."""


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


def _teacher_forward(teacher: nn.Module, image: torch.Tensor, autocast) -> PSPNetOutput:
    """Teacher in eval mode under inference_mode; the two maps the losses read are cloned out
    of inference mode, since autograd may not save inference tensors for the student's backward."""
    with torch.inference_mode(), autocast():
        t = teacher(image)
    return t._replace(logits=t.logits.clone(), feat=t.feat.clone())


def train_step(image: torch.Tensor, label: torch.Tensor, student: nn.Module, opt_g: torch.optim.Optimizer,
               cfg: StepConfig, teacher: nn.Module | None = None, critic: nn.Module | None = None,
               opt_d: torch.optim.Optimizer | None = None, scaler: torch.amp.GradScaler | None = None,
               autocast=contextlib.nullcontext) -> dict[str, float]:
    """One G step (and D step with cfg.ho). image (B,3,H,W), label (B,H,W) train ids.

    Returns the loss terms as floats, weighted as they enter the loss ("task", "pi", "pa",
    "ho", "cwd", "dist", "kd", "d_adv", "d_gp"). Raises NonFiniteLoss when a term, the
    critic's included, is NaN/Inf on any rank; the models are then exactly as before the call:
    no optimizer has stepped, and the buffers the forward passes updated (BatchNorm running
    statistics, the critic's spectral-norm vectors) are restored.
    """
    saved = [(b, b.clone()) for m in (student, critic) if m is not None for b in m.buffers()]
    t = _teacher_forward(teacher, image, autocast) if cfg.distills else None

    with autocast():
        s, s_feat_proj = student(image)
    # Losses in float32 whatever the autocast dtype: the softmaxes and graphs need the range.
    s_logits = s.logits.float()
    terms = {"task": task_loss(s_logits, s.aux_logits.float(), label, aux_weight=cfg.aux_weight,
                               ohem_thresh=cfg.ohem_thresh, ohem_min_kept=cfg.ohem_keep)}
    if cfg.world_size > 1:
        terms["task"] = terms["task"] * _valid_pixel_share(label, cfg.world_size)
    if cfg.pi:
        # Batch-summed: scale by the world size so DDP's gradient average equals one process.
        terms["pi"] = cfg.lambda_pi * cfg.world_size * pixel_wise_loss(s_logits, t.logits.float(),
                                                                       cfg.pi_temperature)
    if cfg.pa:
        terms["pa"] = cfg.lambda_pa * pair_wise_loss(s.feat.float(), t.feat.float(), pool_scale=cfg.pool_scale,
                                                     node_size=cfg.pa_node_size, pool=cfg.pa_pool)
    if cfg.ho:
        disc = _unwrap(critic).disc
        disc.requires_grad_(False)  # the G step moves the student only; D's grads would be dropped
        terms["ho"] = cfg.lambda_d * generator_loss(disc(_d_input(s_logits, cfg)))
        disc.requires_grad_(True)
    if cfg.cwd:
        s_map, t_map = (s_logits, t.logits) if cfg.cwd_on == "logits" else (
            s_feat_proj if s_feat_proj is not None else s.feat, t.feat)
        terms["cwd"] = cfg.lambda_cwd * channel_wise_loss(s_map.float(), t_map.float(), tau=cfg.cwd_tau)
    if cfg.dist:
        terms["dist"] = cfg.lambda_dist * dist_loss(s_logits, t.logits.float(), beta=cfg.dist_beta,
                                                    gamma=cfg.dist_gamma, tau=cfg.dist_tau)
    if cfg.kd:
        terms["kd"] = cfg.lambda_kd * kd_loss(s_logits, t.logits.float(), temperature=cfg.kd_temperature)
    d_terms = {}
    if cfg.ho:
        # The D loss reads this forward's detached student logits and D as it is, so it equals
        # the original's (computed after the G step) and can be checked before any update.
        d_loss, d_terms = critic(_d_input(t.logits.float(), cfg), _d_input(s_logits.detach(), cfg))
    try:
        _check_finite({**terms, **d_terms}, image.device)
    except NonFiniteLoss:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)
        raise

    opt_g.zero_grad(set_to_none=True)
    loss = sum(terms.values())
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt_g)
        scaler.update()
    else:
        loss.backward()
        opt_g.step()
    logs = {k: v.item() for k, v in terms.items()}

    if cfg.ho:
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        logs.update({k: v.item() for k, v in d_terms.items()})
    return logs


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


def _d_input(logits: torch.Tensor, cfg: StepConfig) -> torch.Tensor:
    """The discriminator's input: the logits as they are (the original), or resized to
    --d-input-size for crops too small for its four stride-2 convolutions."""
    if not cfg.d_input_size:
        return logits
    return F.interpolate(logits, size=(cfg.d_input_size,) * 2, mode="bilinear", align_corners=True)


def _check_finite(terms: dict[str, torch.Tensor], device: torch.device) -> None:
    """Raise NonFiniteLoss naming the first bad term; agreed over ranks so none goes on alone."""
    finite = torch.stack([torch.isfinite(v.detach()).all() for v in terms.values()]).to(device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flags = finite.int()
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        finite = flags.bool()
    if not bool(finite.all()):
        names = [k for k, ok in zip(terms, finite.tolist()) if not ok]
        raise NonFiniteLoss(f"loss term {names[0]!r} is not finite")
