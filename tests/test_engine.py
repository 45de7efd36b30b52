"""Engine pieces: step sampler, checkpoint files, poly lr, flag checks."""
import os
import pickle

import pytest
import torch

from skd.data.sampler import SeededDataset, StepSampler
from skd.engine import checkpoint as ckpt
from skd.errors import SkdError
from skd.options import check_train_args, resolve_distill_defaults, train_parser
from skd.train import poly_lr


def test_sampler_resumed_at_step_s_yields_the_tail_of_the_full_run():
    full = list(StepSampler(10, 4, num_steps=7, seed=3))
    resumed = list(StepSampler(10, 4, num_steps=7, seed=3, start_step=5))
    assert len(full) == 7 * 4
    assert resumed == full[5 * 4:]


def test_sampler_epochs_are_permutations_without_the_incomplete_batch():
    items = list(StepSampler(10, 4, num_steps=4, seed=0))  # 2 steps per epoch, 2 images dropped
    for epoch in (items[:8], items[8:]):
        indices = [i for i, _ in epoch]
        assert len(set(indices)) == 8 and set(indices) <= set(range(10))
    assert [i for i, _ in items[:8]] != [i for i, _ in items[8:]]
    seeds = [s for _, s in items]
    assert len(set(seeds)) == len(seeds)


def test_sampler_ranks_split_each_global_batch():
    one = list(StepSampler(12, 4, num_steps=3, seed=1))
    r0 = list(StepSampler(12, 4, num_steps=3, seed=1, rank=0, world_size=2))
    r1 = list(StepSampler(12, 4, num_steps=3, seed=1, rank=1, world_size=2))
    for step in range(3):
        assert r0[2 * step:2 * step + 2] + r1[2 * step:2 * step + 2] == one[4 * step:4 * step + 4]


def test_seeded_dataset_is_reproducible_and_leaves_caller_rng_alone():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.rand(3)

    ds = SeededDataset(Noise())
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    a, b = ds[(0, 42)], ds[(0, 42)]
    assert torch.equal(a, b) and not torch.equal(a, ds[(0, 43)])
    assert torch.equal(torch.rand(1), expected_next)
    # the item's stream is the CPU generator seeded with the item's seed
    assert torch.equal(a, torch.rand(3, generator=torch.Generator().manual_seed(42)))


def test_seeded_dataset_leaves_the_accelerators_generators_alone(monkeypatch):
    """Loading an item seeds the CPU generator only: a CUDA (or other device) seeding, lazy or
    not, would reseed a GPU run's dropout with the item's seed."""
    class One(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.rand(1)

    def refuse(*_args, **_kwargs):
        raise AssertionError("an accelerator generator was seeded")

    for module in (torch.cuda, torch.xpu, torch.mtia):
        monkeypatch.setattr(module, "manual_seed_all", refuse, raising=False)
    SeededDataset(One())[(0, 7)]


def test_poly_lr_follows_the_formula():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert abs(poly_lr(0.01, 50, 100, 0.9) - 0.01 * 0.5 ** 0.9) < 1e-15
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0


def test_checkpoint_roundtrip_rotation_and_corrupt_fallback(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.atomic_save({"skd_format": 1, "step": step, "w": torch.full((2,), float(step))},
                         tmp_path / f"checkpoint_{step:06d}.pth")
    ckpt.rotate(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 3]
    newest = tmp_path / "checkpoint_000004.pth"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a kill mid-copy
    with pytest.raises(SkdError, match="checkpoint_000004.pth"):
        ckpt.load_checkpoint(newest)
    path, state = ckpt.find_resumable(tmp_path)
    assert path.name == "checkpoint_000003.pth" and state["step"] == 3
    assert not list(tmp_path.glob(".*tmp*"))


def test_checkpoint_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"skd_format": 1, "x": Evil()}, f)
    with pytest.raises(SkdError, match="evil.pth"):
        ckpt.load_checkpoint(bad)
    assert not marker.exists()


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_000001.pth"
    ckpt.atomic_save({"skd_format": 1, "step": 1}, path)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SkdError, match=r"no space left on device \(\d+ bytes free in .*\); the previous "
                                       r"checkpoint is kept"):
        ckpt.atomic_save({"skd_format": 1, "step": 2}, path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_rng_state_roundtrips_through_weights_only(tmp_path):
    import random
    state = ckpt.rng_state()
    expected = (torch.rand(2), random.random())
    ckpt.atomic_save({"skd_format": 1, "rng": state}, tmp_path / "c.pth")
    torch.rand(5), random.random()
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "c.pth")["rng"])
    assert torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1]


def _args(tmp_path, *extra):
    args = train_parser().parse_args(["--data-dir", str(tmp_path), "--snapshot-dir", str(tmp_path / "s"), *extra])
    resolve_distill_defaults(args)
    return args


@pytest.mark.parametrize("extra, message", [
    (["--lambda-pi", "-1"], "--lambda-pi -1: must not be negative"),
    (["--lambda-pa", "nan"], "--lambda-pa nan: must be a finite number"),
    (["--lr-g", "inf"], "--lr-g inf: must be a finite number"),
    (["--pool-scale", "1.5"], "--pool-scale 1.5: must be in \\(0, 1\\]"),
    (["--momentum", "1"], "--momentum 1: must be in \\[0, 1\\)"),
    (["--num-workers", "-1"], r"--num-workers -1: must be in \[0, 256\]"),
    (["--d-input-size", "32"], "--d-input-size 32: must be 0 or between 64"),
    (["--input-size", "100000"], "--input-size 100000: each side must be between 16 and 4096"),
    (["--norm", "groupnorm"], "--norm: invalid choice: 'groupnorm'"),
    (["--pi", "maybe"], "--pi maybe: expected True or False"),
    (["--eval-at", "0"], "--eval-at 0: must be at least 1"),
    (["--batch-size", "3"], "multiple of the number of processes"),
    (["--batch-size", "2"], "leaves 1 image per rank, and --norm bn needs at least 2"),
    (["--eval-at", "50000"], "--eval-at 50000: after the last step"),
    (["--pi", "True"], "--pi needs a teacher"),
    (["--teacher-ckpt", "/nonexistent.pth"], "--teacher-ckpt /nonexistent.pth: no such file"),
])
def test_bad_flags_are_refused_with_the_flag_named(tmp_path, extra, message):
    with pytest.raises(SkdError, match=message) as info:
        check_train_args(_args(tmp_path, *extra), world_size=2)
    assert "\n" not in str(info.value)


def test_the_readmes_two_node_example_needs_a_batch_of_two_images_a_rank(tmp_path):
    """torchrun --nnodes=2 --nproc_per_node=8: 16 ranks. The default --batch-size 8 cannot be
    split over them, 16 leaves one image a rank (plain BatchNorm needs two), 32 works."""
    with pytest.raises(SkdError, match="--batch-size 8: the global batch must be a multiple of the number of "
                                       r"processes \(16\)"):
        check_train_args(_args(tmp_path), world_size=16)
    with pytest.raises(SkdError, match="--batch-size 16 over 16 process.es. leaves 1 image per rank"):
        check_train_args(_args(tmp_path, "--batch-size", "16"), world_size=16)
    check_train_args(_args(tmp_path, "--batch-size", "16", "--norm", "syncbn"), world_size=16)
    check_train_args(_args(tmp_path, "--batch-size", "32"), world_size=16)


def test_a_device_this_torch_lacks_is_refused_at_parse(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this torch build has CUDA")
    with pytest.raises(SkdError, match="--device cuda: this torch build has no CUDA device"):
        _args(tmp_path, "--device", "cuda")


def test_distillation_defaults_follow_the_teacher(tmp_path):
    t = tmp_path / "t.pth"
    t.write_bytes(b"")
    with_teacher = _args(tmp_path, "--teacher-ckpt", str(t), "--pa", "False")
    assert (with_teacher.pi, with_teacher.pa, with_teacher.ho) == (True, False, True)
    without = _args(tmp_path)
    assert (without.pi, without.pa, without.ho) == (False, False, False)


def test_unwritable_snapshot_dir_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = _args(tmp_path)
    args.snapshot_dir = blocker / "sub"
    with pytest.raises(SkdError, match="--snapshot-dir"):
        check_train_args(args)
