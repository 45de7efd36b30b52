"""skd.models.load_model / read_model_file on skd's own files and the official SKD ones, the
config check shared with --resume, and the errors for files that are none of the layouts."""
from __future__ import annotations

import sys

import pytest
import torch

from skd.errors import SkdError
from skd.models import (
    build_model,
    check_model_config,
    config_differences,
    load_model,
    load_weights,
    pspnet,
    read_model_file,
)
from skd.nn.norm import BatchNormAct2d

from test_models import official_teacher_layout, randomize_norms, tiny_reference


def _random_net(seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_model(**config).eval()
    randomize_norms(net, torch.Generator().manual_seed(seed))
    return net


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: tuple[int, int] = (33, 41)) -> None:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        oa, ob = a.eval()(x), b.eval()(x)
    for name in oa._fields:
        torch.testing.assert_close(getattr(oa, name), getattr(ob, name), rtol=0, atol=0, msg=name)


# ---- skd's own files -------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [
    dict(arch="resnet18", width_mult=0.25),
    dict(arch="resnet34", head="aspp", num_classes=5, width_mult=0.125),
    dict(arch="resnet18", variant="mmseg", head="aspp", width_mult=0.25, stem="standard"),
    dict(arch="mobilenetv2", variant="skd", width_mult=0.5, num_classes=3),
])
def test_training_checkpoint_gives_back_the_network_it_was_written_from(tmp_path, config):
    source = _random_net(**config)
    path = tmp_path / "ckpt.pth"
    torch.save({"skd_format": 1, "step": 12, "model": source.state_dict(), "model_config": source.config(),
                "norm_weight": "plain", "optimizer": {}, "args": {"lr": 0.01}}, path)
    net = load_model(path)
    assert net.config() == source.config() and not net.training
    _same_outputs(net, source)
    mf = read_model_file(path)
    assert mf.format == "skd" and mf.metadata == {"skd_format": 1, "step": 12, "norm_weight": "plain"}


def test_best_pth_of_an_older_skd_without_head_or_variant_keys_loads(tmp_path):
    """model_config as skd wrote it before --head/--variant: arch, num_classes, width, norm, stem."""
    source = tiny_reference(seed=3)
    old = {k: source.config()[k] for k in ("arch", "num_classes", "width_mult", "norm", "stem")}
    path = tmp_path / "best.pth"
    torch.save({"skd_format": 1, "step": 7, "model": source.state_dict(), "model_config": old,
                "norm_weight": "plain", "miou": 0.25}, path)
    net = load_model(path, norm="syncbn")
    assert net.config() == dict(source.config(), norm="syncbn")
    _same_outputs(net, source)


def test_skd_file_without_model_config_is_read_from_its_keys(tmp_path):
    source = _random_net(arch="resnet50", head="aspp", width_mult=0.125, num_classes=4)
    path = tmp_path / "final.pth"
    torch.save({"skd_format": 1, "model": source.state_dict()}, path)
    assert read_model_file(path).config == source.config()
    _same_outputs(load_model(path), source)


def test_abs_marked_skd_file_converts_its_norm_weights(tmp_path):
    source = tiny_reference(seed=8)
    stored = official_teacher_layout(source, torch.Generator().manual_seed(1))  # w' with |w'| + 1e-5 = w
    stored = {k.removeprefix("module."): v for k, v in stored.items() if not k.startswith("module.fc.")}
    path = tmp_path / "abs.pth"
    torch.save({"skd_format": 1, "model": stored, "model_config": source.config(), "norm_weight": "abs"}, path)
    _same_outputs(load_model(path), source)


# ---- the official files ---------------------------------------------------------------------------
def test_official_teacher_layout_loads_with_its_architecture_from_the_file(tmp_path):
    reference = tiny_reference(seed=1)
    official = official_teacher_layout(reference, torch.Generator().manual_seed(2))
    assert (official["module.bn1.weight"] < 0).any()  # so equal outputs prove the |w| + eps
    path = tmp_path / "teacher.pth"
    torch.save(official, path)
    net = load_model(path)
    assert read_model_file(path).format == "official"
    assert net.config() == reference.config()
    _same_outputs(net, reference)


@pytest.mark.parametrize("depth", [18, 50])
def test_official_student_layout_gives_depth_width_and_classes(tmp_path, depth):
    """The released student: a plain state_dict in the new head layout, no counters."""
    torch.manual_seed(0)
    reference = pspnet(depth, num_classes=6, width_mult=0.125).eval()
    randomize_norms(reference, torch.Generator().manual_seed(0))
    sd = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    norms = [n for n, m in reference.named_modules() if isinstance(m, BatchNormAct2d)]
    for name in norms:
        sd[f"{name}.weight"] = sd[f"{name}.weight"] - 1e-5  # what the original stores: w' with |w'| + eps = w
    path = tmp_path / "student.pth"
    torch.save(sd, path)
    mf = read_model_file(path)
    assert (mf.config["arch"], mf.config["width_mult"], mf.config["num_classes"]) == (f"resnet{depth}", 0.125, 6)
    _same_outputs(load_model(path), reference)


# ---- the config check (load_weights, and --resume through check_model_config) --------------------
def test_check_model_config_names_every_differing_flag_and_ignores_the_norm():
    file_cfg = build_model(arch="resnet18", width_mult=0.25).config()
    run_cfg = dict(file_cfg, arch="resnet34", head="aspp", norm="inplace_abn")
    assert config_differences(file_cfg, run_cfg) == ["arch", "head"]
    with pytest.raises(SkdError) as err:
        check_model_config(file_cfg, run_cfg, "--resume run/ckpt.pth")
    assert str(err.value) == (
        "--resume run/ckpt.pth: the file holds --arch resnet18 --head psp, this run has --arch resnet34 --head aspp; "
        "pass the file's values or leave those flags out (the file describes its model)"
    )
    check_model_config(file_cfg, dict(file_cfg, norm="syncbn"), "x")


def test_check_model_config_fills_in_what_older_files_lack():
    old = {"arch": "resnet18", "num_classes": 19, "width_mult": 1.0, "norm": "bn", "stem": "deep"}
    assert config_differences(old, build_model(arch="resnet18").config()) == []
    assert config_differences(old, dict(build_model(arch="resnet18").config(), variant="mmseg", stem="v1c")) == [
        "variant", "stem"]
    with pytest.raises(SkdError, match=r"model_config has unknown keys \['depth'\]"):
        check_model_config(dict(old, depth=18), old, "x")


def test_head_width_differences_have_no_flag_and_say_so():
    a = build_model(arch="mobilenetv2", variant="mmseg", width_mult=0.5).config()
    with pytest.raises(SkdError, match="holds model_config head_channels 512, this run has model_config head_channels 64"):
        check_model_config(a, dict(a, head_channels=64), "f.pth")


def test_load_weights_with_another_class_count_names_the_flag(tmp_path):
    source = tiny_reference()
    path = tmp_path / "ckpt.pth"
    torch.save({"skd_format": 1, "model": source.state_dict(), "model_config": source.config()}, path)
    with pytest.raises(SkdError, match=r"holds --num-classes 19, this run has --num-classes 21"):
        load_weights(pspnet(18, num_classes=21, width_mult=0.25), path)


# ---- bad input -------------------------------------------------------------------------------------
def test_a_file_of_no_known_layout_says_which_layouts_were_tried(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(SkdError) as err:
        load_model(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a segmentation checkpoint skd knows; tried an skd checkpoint")
    assert "an mmsegmentation checkpoint" in message and "an official SKD state_dict" in message
    assert message.endswith("its keys begin encoder.weight") and "\n" not in message


def test_an_imagenet_file_given_as_a_model_says_where_it_belongs(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, path)
    with pytest.raises(SkdError, match=r"looks like ImageNet backbone weights: .*--restore-from"):
        load_model(path)


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_file_is_one_line_naming_it(tmp_path, damage):
    path = tmp_path / "broken.pth"
    torch.save({"skd_format": 1, "model": tiny_reference().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(SkdError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: cannot be loaded: ") and "\n" not in str(err.value)


class _Payload:
    def __reduce__(self):
        return (print, ("ran",))


def test_a_foreign_pickle_in_an_mmseg_file_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "mmseg.pth"
    torch.save({"meta": {"hook": _Payload()}, "state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(SkdError, match=r"cannot be loaded: unpickling it would call print, which weights-only"):
        load_model(path)
    assert "ran" not in capsys.readouterr().out


def test_an_mmengine_object_gets_the_re_save_hint(tmp_path, monkeypatch):
    """mmengine training checkpoints hold HistoryBuffer objects: keep only the state_dict."""
    import types

    class HistoryBuffer:
        pass

    names = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = names[-1], "HistoryBuffer"
    sys.modules[names[-1]].HistoryBuffer = HistoryBuffer
    path = tmp_path / "iter_80000.pth"
    torch.save({"message_hub": {"log_scalars": {"loss": HistoryBuffer()}}, "state_dict": {}}, path)
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(SkdError, match=r"would call mmengine\.logging\.history_buffer\.HistoryBuffer.*"
                                       r"keep only its weights.*\['state_dict'\]"):
        load_model(path)


def test_model_config_that_does_not_build_names_the_file(tmp_path):
    source = tiny_reference()
    path = tmp_path / "odd.pth"
    torch.save({"skd_format": 1, "model": source.state_dict(), "model_config": dict(source.config(), arch="vgg16")}, path)
    with pytest.raises(SkdError, match=r"odd\.pth: its model_config .* does not build: --arch vgg16: unknown"):
        load_model(path)


def test_weights_that_contradict_their_model_config_name_the_keys(tmp_path):
    source = tiny_reference()
    path = tmp_path / "odd.pth"
    torch.save({"skd_format": 1, "model": source.state_dict(), "model_config": dict(source.config(), num_classes=21)}, path)
    with pytest.raises(SkdError, match=r"head\.weight is \(19, 32, 1, 1\) in the file, \(21, 32, 1, 1\) in the model"):
        load_model(path)
