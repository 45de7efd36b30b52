"""The distillation terms of the student's loss: one list, each entry with its flags, its weight
and what it computes.

A term reads the student's and the teacher's outputs (`PSPNetOutput`: logits, aux_logits,
feat = the head's bottleneck output, layer4 ... layer1) and returns its UNWEIGHTED value; the
step weighs it with the coefficient `StepConfig.weights[name]` (its lambda flag, times the
number of ranks for a term summed over the batch, see `Term.batch_summed`). A new loss is its
own file in skd/losses and one entry here: its switch `--<name>`, its lambda, its
hyper-parameters and its compute function.

Defaults: pi, pa and ho follow the original SKD code, cited in each help text (SKD = the
original repository irfanICMLL/structure_knowledge_distillation); the other terms' defaults are
explained in docs/reproduction.md, which says for every default whose choice it is.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import argparse

import torch.nn.functional as F
from torch import Tensor, nn

from skd.flags import NONNEG, POSITIVE, POSITIVE_INT, UNIT, Flag, choice, switch
from skd.losses import (Connector, FitNetConnector, attention_transfer_loss, channel_wise_loss, dist_loss,
                        fitnet_loss, generator_loss, ifvd_loss, kd_loss, local_affinity_loss, pair_wise_loss,
                        pixel_wise_loss)
from skd.losses.holistic import KINDS as ADV_KINDS
from skd.models import PSPNetOutput

# The maps of PSPNetOutput a term can read.
MAPS = PSPNetOutput._fields


@dataclass(frozen=True)
class TermInputs:
    """What a term reads: both networks' outputs (float32), the labels, the student's maps
    after their connectors, the critic (for ho) and every term's hyper-parameters by flag dest."""

    s: PSPNetOutput
    t: PSPNetOutput
    label: Tensor
    projected: Mapping[str, Tensor]
    critic: nn.Module | None
    params: Mapping[str, Any]
    align_corners: bool = True   # the student's upsampling convention

    def maps(self, term: str, name: str) -> tuple[Tensor, Tensor]:
        """(student map, teacher map) of output `name` for `term`: the student's through the
        term's connector where it has one; the teacher's resized (bilinear, the student's
        align_corners) to the student's size where the two networks differ in output stride."""
        s_map = self.projected.get(term, getattr(self.s, name))
        t_map = getattr(self.t, name)
        if t_map.shape[-2:] != s_map.shape[-2:]:
            t_map = F.interpolate(t_map, size=s_map.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return s_map, t_map


@dataclass(frozen=True)
class Term:
    """One distillation term.

    name:          its switch `--<name>` and its key in the logs.
    help:          the switch's help (what it is, the paper).
    weight:        its lambda flag.
    compute:       TermInputs -> unweighted scalar.
    params:        its other flags.
    batch_summed:  summed (not averaged) over the batch in its definition; under DDP the weight
                   is multiplied by the number of ranks so the averaged gradient equals one
                   process's on the same global batch.
    paper_default: on by default when a teacher is given (the paper's pi, pa, ho).
    feature:       params -> the output it reads ("logits", "feat", ...); a connector maps the
                   student's map to the teacher's channels when they differ.
    connector:     (in channels, out channels, norm layer) -> module, for `feature`.
    always_connect: the method puts the connector in even when the channels agree (FitNet).
    """

    name: str
    help: str
    weight: Flag
    compute: Callable[[TermInputs], Tensor]
    params: tuple[Flag, ...] = ()
    batch_summed: bool = False
    paper_default: bool = False
    feature: Callable[[Mapping[str, Any]], str] | None = None
    connector: Callable[..., nn.Module] | None = None
    always_connect: bool = False


def _pi(x: TermInputs) -> Tensor:
    s, t = x.maps("pi", "logits")
    return pixel_wise_loss(s, t, x.params["pi_temperature"])


def _pa(x: TermInputs) -> Tensor:
    s, t = x.maps("pa", x.params["pa_feat"])
    return pair_wise_loss(s, t, pool_scale=x.params["pool_scale"], node_size=x.params["pa_node_size"],
                          pool=x.params["pa_pool"])


def d_input(logits: Tensor, size: int) -> Tensor:
    """The discriminator's input: the logits as they are (the original), or resized to size x
    size (bilinear) for crops too small for its four stride-2 convolutions (--d-input-size)."""
    if not size:
        return logits
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True)


def _ho(x: TermInputs) -> Tensor:
    disc = x.critic.disc
    disc.requires_grad_(False)  # the G step moves the student only; D's gradients would be dropped
    try:
        return generator_loss(disc(d_input(x.s.logits, x.params["d_input_size"])))
    finally:
        disc.requires_grad_(True)


def _cwd(x: TermInputs) -> Tensor:
    s, t = x.maps("cwd", x.params["cwd_on"])
    return channel_wise_loss(s, t, tau=x.params["cwd_tau"])


def _dist(x: TermInputs) -> Tensor:
    s, t = x.maps("dist", "logits")
    return dist_loss(s, t, beta=x.params["dist_beta"], gamma=x.params["dist_gamma"], tau=x.params["dist_tau"])


def _kd(x: TermInputs) -> Tensor:
    s, t = x.maps("kd", "logits")
    return kd_loss(s, t, temperature=x.params["kd_temperature"])


def _d_size(text: str) -> int:
    """--d-input-size: 0 (logits as they are) or 64..1024 (64: the discriminator's smallest input;
    1024 keeps its self-attention's N x N maps within memory)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not an integer") from None
    if value != 0 and not 64 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or between 64 (the discriminator's smallest input) "
                                         f"and 1024")
    return value


def _at(x: TermInputs) -> Tensor:
    s, t = x.maps("at", x.params["at_on"])
    return attention_transfer_loss(s, t)


def _local(x: TermInputs) -> Tensor:
    s, t = x.maps("local", x.params["local_on"])
    return local_affinity_loss(s, t)


def _ifvd(x: TermInputs) -> Tensor:
    s, t = x.maps("ifvd", x.params["ifvd_on"])
    return ifvd_loss(s, t, x.label, x.s.logits.shape[1])


def _fitnet(x: TermInputs) -> Tensor:
    s, t = x.maps("fitnet", x.params["fitnet_on"])
    return fitnet_loss(s, t)


def _fitnet_connector(in_channels: int, out_channels: int, _norm_layer=None) -> nn.Module:
    return FitNetConnector(in_channels, out_channels)


def _map_flag(name: str, default: str, help: str) -> Flag:
    return choice(name, MAPS, default, f"{help} (one of {', '.join(MAPS)}; default %(default)s)")


TERMS: tuple[Term, ...] = (
    Term("pi", "pixel-wise distillation, the paper's pi term",
         Flag("--lambda-pi", NONNEG, 10.0, "lambda_pi (default 10: SKD run_train_val.sh line 4)"),
         _pi, batch_summed=True, paper_default=True,
         params=(Flag("--pi-temperature", POSITIVE, 1.0,
                      "pixel-wise temperature; 1 is the paper, other values (with the T^2 factor) ours"),)),
    Term("pa", "pair-wise distillation, the paper's pa term",
         Flag("--lambda-pa", NONNEG, 0.5, "lambda_pa (default 0.5: SKD run_train_val.sh line 22)"),
         _pa, paper_default=True,
         params=(Flag("--pool-scale", UNIT, 0.5,
                      "pair-wise node = max-pool of (int(H*s), int(W*s)) feature pixels, ceil mode (default "
                      "0.5: SKD run_train_val.sh line 23, utils/criterion.py lines 241-244)"),
                 Flag("--pa-node-size", POSITIVE_INT, None,
                      "pair-wise node of BETA x BETA feature pixels, the paper's text (overrides --pool-scale)"),
                 choice("--pa-pool", ("max", "avg"), "max", "pooling of --pa-node-size nodes (default max)"),
                 _map_flag("--pa-feat", "feat", "map the pair-wise graphs are built on: feat, the PSP bottleneck "
                                                "output, is SKD's (networks/kd_model.py line 82, feat_ind=-5)")),
         feature=lambda p: p["pa_feat"]),
    Term("ho", "holistic (adversarial) distillation, the paper's ho term",
         Flag("--lambda-d", NONNEG, 0.1, "lambda_d, weight of the adversarial terms of G and D (default 0.1: SKD "
                                         "run_train_val.sh line 5)"),
         _ho, paper_default=True,
         params=(Flag("--lambda-gp", NONNEG, 10.0, "gradient penalty weight (default 10: SKD utils/train_options.py line 55)"),
                 choice("--adv-loss-type", ADV_KINDS, "wgan-gp", "discriminator objective (default wgan-gp: SKD "
                                                                 "utils/train_options.py line 52)"),
                 Flag("--adv-conv-dim", POSITIVE_INT, 64, "channels of the discriminator's first convolution "
                                                         "(then x2, x4, x8; default 64: SKD utils/train_options.py "
                                                         "line 54)"),
                 Flag("--d-input-size", _d_size, 0,
                      "resize the logits to N x N (bilinear) before the discriminator; 0 = as they are, the "
                      "original (65x65 for a 512 crop). The discriminator needs at least 64x64"))),
    Term("cwd", "channel-wise distillation (Shu et al. 2021)",
         Flag("--lambda-cwd", NONNEG, 3.0, "CWD weight (default 3, the CWD paper's weight on logits)"),
         _cwd,
         params=(Flag("--cwd-tau", POSITIVE, 4.0, "CWD temperature tau (default 4, the CWD paper's)"),
                 _map_flag("--cwd-on", "logits", "map CWD compares: logits, or feat (the PSP bottleneck, through "
                                                 "TorchDistiller's connector when the channels differ)")),
         feature=lambda p: p["cwd_on"], connector=Connector),
    Term("dist", "DIST (Huang et al. 2022)",
         Flag("--lambda-dist", NONNEG, 1.0, "DIST weight (default 1)"),
         _dist,
         params=(Flag("--dist-beta", NONNEG, 1.0, "DIST inter-class weight beta (default 1)"),
                 Flag("--dist-gamma", NONNEG, 1.0, "DIST intra-class weight gamma (default 1)"),
                 Flag("--dist-tau", POSITIVE, 1.0, "DIST temperature (default 1: the segmentation version has "
                                                   "none; other values ours)"))),
    Term("kd", "per-pixel Hinton KD",
         Flag("--lambda-kd", NONNEG, 1.0, "KD weight (default 1)"),
         _kd,
         params=(Flag("--kd-temperature", POSITIVE, 4.0, "KD temperature (default 4)"),)),
    Term("at", "attention transfer (Zagoruyko and Komodakis 2017)",
         Flag("--lambda-at", NONNEG, 1000.0, "AT weight (default 1000: the AT paper's beta 1e3 on the map's mean)"),
         _at,
         params=(_map_flag("--at-on", "feat", "map AT compares: feat (the PSP bottleneck, CIRKD's) or logits"),),
         feature=lambda p: p["at_on"]),
    Term("local", "local affinity: each position's distances to its 8 neighbours (the CWD paper's LOCAL)",
         Flag("--lambda-local", NONNEG, 1.0, "LOCAL weight (default 1, ours: the CWD paper gives none)"),
         _local,
         params=(_map_flag("--local-on", "feat", "map LOCAL compares"),),
         feature=lambda p: p["local_on"]),
    Term("ifvd", "intra-class feature variation distillation (Wang et al. 2020)",
         Flag("--lambda-ifvd", NONNEG, 200.0, "IFVD weight (default 200: the official IFVD options.py line 102)"),
         _ifvd,
         params=(_map_flag("--ifvd-on", "feat", "map IFVD compares: feat, the PSP bottleneck (the official "
                                                "code's preds[2])"),),
         feature=lambda p: p["ifvd_on"]),
    Term("fitnet", "FitNet hints through a trained 1x1 connector (Romero et al. 2015)",
         Flag("--lambda-fitnet", NONNEG, 10.0, "FitNet weight (default 10: CIRKD's train_fitnet.sh)"),
         _fitnet,
         params=(_map_flag("--fitnet-on", "feat", "map the hint is taken from"),),
         feature=lambda p: p["fitnet_on"], connector=_fitnet_connector, always_connect=True),
)
TERMS_BY_NAME = {term.name: term for term in TERMS}

# The discriminator's own terms and the flags their weights come from: lambda_d * objective,
# lambda_d * lambda_gp * penalty (the original's kd_model.py lines 158-161).
CRITIC_TERMS = ("d_adv", "d_gp")


def term_flags() -> list[tuple[Term, list[Flag]]]:
    """Each term with all its flags: the switch, the weight, the hyper-parameters."""
    return [(t, [switch(f"--{t.name}", None if t.paper_default else False,
                        t.help + (" (default: on when --teacher-ckpt is given, the paper)" if t.paper_default
                                  else " (default off)")),
                 t.weight, *t.params]) for t in TERMS]
