"""Evaluation sharded over two gloo processes gives exactly the single-process confusion matrix,
with an odd number of images, so the shards are uneven (3 and 2)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from skd.data import CityscapesDataset, EvalTransform
from skd.engine.evaluate import evaluate
from skd.models import build_pspnet

NUM_VAL = 3  # conftest's tiny dataset: odd, so the two shards differ in size
WORLD_SIZE = 2


class RecordingDataset:
    """The dataset, noting which indices were read (to prove no image is read twice or skipped)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        self.read.append(i)
        return self.dataset[i]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same random weights on every rank
    return build_pspnet("resnet18", num_classes=19, width_mult=0.25)


def _rank_main(rank: int, data_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    try:
        data = RecordingDataset(CityscapesDataset(Path(data_dir), "val", transform=EvalTransform()))
        conf = evaluate(tiny_model(), data, device=torch.device("cpu"), num_classes=19, rank=rank, world_size=WORLD_SIZE)
        torch.save({"mat": conf.mat, "miou": conf.iou()[1], "read": data.read}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def val_dir(cityscapes_dir) -> Path:
    return cityscapes_dir


def test_two_gloo_ranks_reduce_to_the_single_process_confusion_matrix(val_dir, tmp_path):
    dataset = CityscapesDataset(val_dir, "val", transform=EvalTransform())
    assert len(dataset) == NUM_VAL and NUM_VAL % WORLD_SIZE == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: the same kernels, so the same logits bit for bit
    try:
        single = evaluate(tiny_model(), dataset, device=torch.device("cpu"), num_classes=19)
    finally:
        torch.set_num_threads(threads)
    assert int((single.mat.sum(0) > 0).sum()) >= 2, "the model predicts one class only: a weak test"
    valid = sum(int((dataset[i][1] != 255).sum()) for i in range(NUM_VAL))
    assert int(single.mat.sum()) == valid

    mp.spawn(_rank_main, args=(str(val_dir), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]

    assert [sorted(r["read"]) for r in ranks] == [[0, 2], [1]]  # every image once, shards 2 + 1
    for r in ranks:
        assert torch.equal(r["mat"], single.mat)
        assert r["miou"] == single.iou()[1]
