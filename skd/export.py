"""skd-export: the student as a deployable file (TorchScript, torch.export program or ONNX).

    skd-export --ckpt runs/student/best.pth --format onnx --out student.onnx --input-size 1024,2048

What is exported (`DeployNet`): raw image in, logits at the image size out.
- Input: (B, 3, H, W) float32, BGR channel order, values 0..255, exactly as `cv2.imread` gives
  an image after `.astype(np.float32).transpose(2, 0, 1)`. The network's own input convention
  (`net.input_spec.normalize`, see skd/models/convention.py: for skd's SegmentationNets the Caffe BGR
  mean subtracted, no std) is part of the exported graph, so a caller never normalises.
- Output: (B, K, H, W) logits, bilinearly upsampled to the input size with the network's
  align_corners (True for skd's SegmentationNets, as the original evaluation), so `argmax(1)` is the
  label map skd-eval would score; `--upsample False` keeps the (B, K, ~H/8, ~W/8) logits.
- No auxiliary (DSN) head: it only serves the training loss.
- A fixed input size (`--input-size`, default 1024,2048, a full Cityscapes image) and batch.

Every export is checked before it is kept: the written file is loaded back (torch.jit.load,
torch.export.load, onnxruntime) and run on a random raw image; the largest absolute difference
to the eager network is printed and must stay within `--atol + --rtol * max|eager logits|`,
or the file is not written.

ONNX and the pyramid pooling: the legacy TorchScript-based exporter refuses
`adaptive_avg_pool2d` when the output size does not divide the input ("Unsupported: ONNX export
of operator adaptive_avg_pool2d, output size that are not factor of input size"), which is
the case for SegmentationNet's bins 3 and 6 on a 65x65 or 129x257 feature map. The torch.export-based
exporter (the default since torch 2.9) exports it through a Gather/Where decomposition. We
export neither: every `nn.AdaptiveAvgPool2d` is replaced, for the fixed input size, by
`FixedAdaptiveAvgPool2d`, which averages the same bins with slices and sums (ONNX Slice,
ReduceSum, Div, Concat), so both exporters and any ONNX runtime take it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skd.engine.build import network_from_args
from skd.engine.runtime import setup_logging
from skd.errors import SkdError, cli
from skd.models import SegmentationNet
from skd.models.convention import InputSpec
from skd.options import add_model_args, size_pair, str2bool

log = logging.getLogger("skd.export")

FORMATS = ("torchscript", "exported-program", "onnx")
ONNX_EXPORTERS = ("dynamo", "torchscript")


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """The bins of PyTorch's adaptive pooling along one axis: bin i covers
    [floor(i * size / out), ceil((i + 1) * size / out)). Neighbouring bins overlap by one
    element when `out` does not divide `size` (13 -> 6: (0,3) (2,5) (4,7) (6,9) (8,11) (10,13))."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


class FixedAdaptiveAvgPool2d(nn.Module):
    """`nn.AdaptiveAvgPool2d(output_size)` for one input size, with plain slices and sums.

    (B, C, H, W) -> (B, C, oh, ow), H, W fixed at construction. Bin (i, j) is the mean of
    x[..., h0:h1, w0:w1] with the bins of `adaptive_bins`, computed as the separable sum over
    the rows of bin i, then over the columns of bin j, divided by (h1 - h0) and then by
    (w1 - w0): the order in which PyTorch's CPU kernel divides (ATen
    native/cpu/AdaptiveAvgPoolKernel.cpp). A 1x1 output is the mean over (H, W), as ATen's
    adaptive_avg_pool2d special case. Values are those of the original up to the order of the
    additions: bit-identical when the sums are exact (small integers), otherwise within a few
    float32 ulps.
    """

    def __init__(self, output_size: int | tuple[int, int], input_size: tuple[int, int]) -> None:
        super().__init__()
        oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
        h, w = input_size
        if not (1 <= oh <= h and 1 <= ow <= w):
            raise ValueError(f"FixedAdaptiveAvgPool2d: output {oh}x{ow} for an input of {h}x{w}")
        self.output_size = (oh, ow)
        self.input_size = (h, w)
        self.row_bins = adaptive_bins(h, oh)
        self.col_bins = adaptive_bins(w, ow)
        self.register_buffer("row_len", torch.tensor([b - a for a, b in self.row_bins], dtype=torch.float32)
                             .view(oh, 1), persistent=False)
        self.register_buffer("col_len", torch.tensor([b - a for a, b in self.col_bins], dtype=torch.float32)
                             .view(1, ow), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"FixedAdaptiveAvgPool2d built for {self.input_size}, got {tuple(x.shape[-2:])}")
        if self.output_size == (1, 1):
            return x.mean(dim=(-2, -1), keepdim=True)
        rows = torch.stack([x[..., a:b, :].sum(dim=-2) for a, b in self.row_bins], dim=-2)
        sums = torch.stack([rows[..., a:b].sum(dim=-1) for a, b in self.col_bins], dim=-1)
        return sums / self.row_len.to(x.dtype) / self.col_len.to(x.dtype)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, input_size={self.input_size}"


def fix_adaptive_pools(module: nn.Module, example: Tensor) -> int:
    """Replace, in place, every nn.AdaptiveAvgPool2d of `module` by the FixedAdaptiveAvgPool2d
    of the input size it sees when `module` runs on `example`. Returns how many were replaced."""
    seen: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.AdaptiveAvgPool2d):
            hooks.append(sub.register_forward_hook(
                lambda m, inp, out, name=name: seen.__setitem__(name, tuple(inp[0].shape[-2:]))))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    for name, size in seen.items():
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        pool = module.get_submodule(name)
        # Sequential and ModuleList keep their children under string keys too ("0", "1", ...)
        setattr(parent, child, FixedAdaptiveAvgPool2d(_pair(pool.output_size, size), size))
    return len(seen)


def _pair(output_size, input_size: tuple[int, int]) -> tuple[int, int]:
    """nn.AdaptiveAvgPool2d's output_size (int, pair, None meaning the input's) as a pair."""
    if isinstance(output_size, int):
        return output_size, output_size
    return tuple(i if o is None else o for o, i in zip(output_size, input_size))  # type: ignore[return-value]


class DeployNet(nn.Module):
    """A SegmentationNet for deployment: (B, 3, H, W) raw BGR 0..255 float -> (B, K, H, W) logits.

    Normalises with the network's InputSpec, runs the backbone, pyramid pooling and classifier
    (not the auxiliary DSN head) and, with `upsample`, resizes the logits bilinearly to the
    input size with the spec's align_corners; without, returns them at ~1/8 of the input.
    """

    def __init__(self, net: SegmentationNet, upsample: bool = True) -> None:
        super().__init__()
        self.net = net
        self.upsample = upsample
        self.spec: InputSpec = net.input_spec

    def forward(self, raw: Tensor) -> Tensor:
        x = self.spec.normalize(raw)
        l4 = self.net.backbone(x)[3]
        _, logits = self.net.decode_head(l4)
        if self.upsample:
            logits = F.interpolate(logits, size=raw.shape[-2:], mode="bilinear",
                                   align_corners=self.spec.align_corners)
        return logits


def deploy_parameters(net: SegmentationNet) -> int:
    """Parameter elements a DeployNet uses: all of the network's but the auxiliary head's."""
    aux = {id(p) for p in net.auxiliary_head.parameters()}
    return sum(p.numel() for p in net.parameters() if id(p) not in aux)


def add_network_args(p: argparse.ArgumentParser, ckpt_required: bool = False) -> None:
    """--ckpt (optional) and the architecture flags (skd-eval's, without --norm, which changes
    nothing at inference): a file describes its network, flags given must agree with it; without
    --ckpt the flags build a randomly initialised network."""
    p.add_argument("--ckpt", type=Path, default=None, required=ckpt_required,
                   help="the network (skd, official SKD or mmseg checkpoint)"
                        + ("" if ckpt_required else "; without it, random weights of the model flags"))
    add_model_args(p, describes_itself=True, norm=False, title="model")


def build_network(args: argparse.Namespace) -> SegmentationNet:
    """The network of --ckpt and/or the model flags, in eval mode with plain BN (the norm does
    not change the weights). skd-profile and skd-export share it."""
    if getattr(args, "num_classes", None) is None and getattr(args, "ckpt", None) is None:
        args.num_classes = 19
    return network_from_args(args, getattr(args, "ckpt", None)).eval()


def random_raw_image(shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """A float32 raw image batch, uniform in 0..255, from its own generator (reproducible)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 255.0


@contextlib.contextmanager
def quiet_exporters():
    """Silence the exporters' chatter (graph-pass INFO lines, TracerWarnings, deprecations);
    our own check and its printed difference say whether the export is good."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "torch.export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_torchscript(model: nn.Module, example: Tensor, path: Path) -> Callable[[Tensor], Tensor]:
    """torch.jit.trace at the example's size; returns the loaded-back module's forward."""
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))
    loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda x: loaded(x)


def export_program(model: nn.Module, example: Tensor, path: Path) -> Callable[[Tensor], Tensor]:
    """torch.export.export with static shapes, saved as a .pt2; returns the loaded-back program."""
    program = torch.export.export(model, (example,))
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    return lambda x: loaded(x)


def export_onnx(model: nn.Module, example: Tensor, path: Path, exporter: str = "dynamo",
                opset: int = 18) -> Callable[[Tensor], Tensor]:
    """torch.onnx.export of `model` with its adaptive pools made fixed (FixedAdaptiveAvgPool2d),
    input "image", output "logits"; returns a runner of the written file (onnxruntime when
    installed, else onnx's reference evaluator, slow: numpy).

    exporter "dynamo" (torch.export-based, needs the onnx and onnxscript packages) or
    "torchscript" (the legacy exporter, needs onnx). Raises SkdError when a package is missing.
    """
    _require("onnx", "--format onnx")
    if exporter == "dynamo":
        _require("onnxscript", "--format onnx --onnx-exporter dynamo",
                 " (or --onnx-exporter torchscript, which needs only onnx)")
    model = copy.deepcopy(model)
    fix_adaptive_pools(model, example)
    kwargs = dict(input_names=["image"], output_names=["logits"], opset_version=opset)
    with torch.no_grad():
        if exporter == "dynamo":
            program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, **kwargs)
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, **kwargs)
    return onnx_runner(path)


def onnx_runner(path: Path) -> Callable[[Tensor], Tensor]:
    """Run an ONNX file on a CPU tensor: onnxruntime if installed, else onnx.reference."""
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    if onnxruntime is not None:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    from onnx.reference import ReferenceEvaluator
    log.warning("onnxruntime is not installed: checking with onnx's reference evaluator (slow); "
                "pip install 'skd[onnx]' for onnxruntime")
    ref = ReferenceEvaluator(str(path))
    name = ref.input_names[0]
    return lambda x: torch.from_numpy(ref.run(None, {name: x.numpy()})[0])


def _require(module: str, what: str, alternative: str = "") -> None:
    try:
        __import__(module)
    except ImportError:
        raise SkdError(f"{what} needs the {module} package, which is not installed: "
                       f"pip install 'skd[onnx]'{alternative}") from None


def check_export(eager: nn.Module, run: Callable[[Tensor], Tensor], example: Tensor, atol: float,
                 rtol: float) -> tuple[float, float, tuple[int, ...]]:
    """Max |run(x) - eager(x)| on `example`, the bound atol + rtol * max|eager(x)| it must
    respect, and the output shape. Raises SkdError when the shapes differ or the difference
    exceeds the bound."""
    with torch.no_grad():
        want = eager(example)
    got = run(example)
    if tuple(got.shape) != tuple(want.shape):
        raise SkdError(f"the exported model returns {tuple(got.shape)}, the eager one {tuple(want.shape)}")
    diff = (got.to(want.dtype) - want).abs().max().item()
    bound = atol + rtol * want.abs().max().item()
    if not diff <= bound:  # also catches NaN
        raise SkdError(f"the exported model differs from the eager one by {diff:.3g} (> {bound:.3g}); "
                       f"the file was not written")
    return diff, bound, tuple(want.shape)


EXPORTERS = {"torchscript": export_torchscript, "exported-program": export_program, "onnx": export_onnx}


def export(model: nn.Module, fmt: str, out: Path, input_size: tuple[int, int], batch_size: int = 1,
           atol: float = 1e-4, rtol: float = 1e-4, onnx_exporter: str = "dynamo",
           seed: int = 0) -> dict:
    """Export `model` (a DeployNet, or any module of one raw-image input) as `fmt` to `out`.

    The file is written beside `out` under a temporary name, loaded back, checked against the
    eager model on a random raw image (check_export) and only then renamed to `out`. Returns
    {"format", "path", "input_shape", "output_shape", "max_abs_diff", "bound"}.
    """
    if fmt not in EXPORTERS:
        raise SkdError(f"--format {fmt}: unknown; use one of {', '.join(FORMATS)}")
    model = model.eval()
    example = random_raw_image((batch_size, 3, *input_size), seed)
    check_input = random_raw_image((batch_size, 3, *input_size), seed + 1)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix, dir=out.parent)
        os.close(fd)
    except OSError as e:
        raise SkdError(f"--out {out}: cannot write there ({e.strerror})") from None
    tmp = Path(tmp_name)
    try:
        with quiet_exporters():
            if fmt == "onnx":
                run = export_onnx(model, example, tmp, exporter=onnx_exporter)
            else:
                run = EXPORTERS[fmt](model, example, tmp)
        diff, bound, out_shape = check_export(model, run, check_input, atol, rtol)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; give it an ordinary file's mode
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"format": fmt, "path": str(out), "input_shape": list(example.shape), "output_shape": list(out_shape),
            "max_abs_diff": diff, "bound": bound}


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skd-export",
        description="Write a network checkpoint for deployment (raw BGR 0..255 image in, logits out, "
                    "no auxiliary head), checked against the eager network.")
    add_network_args(p, ckpt_required=True)
    p.add_argument("--format", choices=FORMATS, required=True, help="output format")
    p.add_argument("--out", type=Path, required=True, help="file to write (.pt, .pt2, .onnx)")
    p.add_argument("--input-size", type=size_pair, default=(1024, 2048),
                   help="fixed input H,W (default 1024,2048, a Cityscapes image)")
    p.add_argument("--batch-size", type=int, default=1, help="fixed batch size (default 1)")
    p.add_argument("--upsample", type=str2bool, nargs="?", const=True, default=True,
                   help="logits resized to the input size (default True); False: at ~1/8 of it")
    p.add_argument("--onnx-exporter", choices=ONNX_EXPORTERS, default="dynamo",
                   help="torch.onnx exporter: dynamo (torch.export-based, needs onnxscript) or "
                        "torchscript (legacy); default dynamo")
    p.add_argument("--atol", type=float, default=1e-4, help="check: absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="check: tolerance relative to max |logit| (default 1e-4)")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = export_parser().parse_args(argv)
    setup_logging()
    if args.batch_size < 1 or min(args.input_size) < 16:
        raise SkdError("--batch-size must be at least 1 and each side of --input-size at least 16")
    net = build_network(args)
    result = export(DeployNet(net, upsample=args.upsample), args.format, args.out, args.input_size,
                    args.batch_size, args.atol, args.rtol, args.onnx_exporter)
    print(f"wrote {result['path']} ({result['format']}): input {tuple(result['input_shape'])} raw BGR 0..255 "
          f"float32 -> logits {tuple(result['output_shape'])}")
    print(f"check on a random image: max |exported - eager| = {result['max_abs_diff']:.3g} "
          f"(bound {result['bound']:.3g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
