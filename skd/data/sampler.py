"""Step-indexed training sampler: the data order and augmentation of step s do not depend on
how the run got to step s, so a resumed run sees exactly the batches an uninterrupted one would.

Each epoch is a permutation drawn from (seed, epoch); under DDP every rank takes its own slice
of each global batch. Every sample also carries its own seed, derived from (seed, epoch,
position), and `SeededDataset` runs the dataset's random transform under that seed. Worker
count, worker assignment and resume point therefore change nothing.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


def _mix(*ints: int) -> int:
    """A 63-bit seed from a few integers (splitmix-style), stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for v in ints:
        h = (h ^ (v + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class StepSampler(Sampler[tuple[int, int]]):
    """Yields (dataset index, sample seed) for this rank, from global step `start_step` on.

    Each global batch of `batch_size` consecutive positions of an epoch's permutation is split
    into `world_size` equal slices; the last incomplete batch of an epoch is dropped (as the
    original's drop_last), so step s always reads epoch s // steps_per_epoch.
    """

    def __init__(self, dataset_len: int, batch_size: int, num_steps: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, start_step: int = 0):
        if dataset_len < batch_size:
            raise ValueError(f"{dataset_len} training images is fewer than one batch of {batch_size}")
        self.n = dataset_len
        self.batch_size = batch_size
        self.local = batch_size // world_size
        self.num_steps = num_steps
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self.steps_per_epoch = dataset_len // batch_size

    def __len__(self) -> int:
        return (self.num_steps - self.start_step) * self.local

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = -1
        perm: list[int] = []
        for step in range(self.start_step, self.num_steps):
            e, b = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch = e
                g = torch.Generator().manual_seed(_mix(self.seed, e))
                perm = torch.randperm(self.n, generator=g).tolist()
            first = b * self.batch_size + self.rank * self.local
            for pos in range(first, first + self.local):
                yield perm[pos], _mix(self.seed, e, pos)


class SeededDataset(Dataset):
    """Wraps a dataset so that item (index, seed) is transformed under torch seed `seed`.

    The global CPU generator is forked, so the caller's stream (dropout, ...) is untouched when
    loading in the main process. Only the CPU generator is seeded: `torch.manual_seed` would also
    reseed every CUDA device (outside the fork, so a GPU run's dropout would follow the last
    item's seed) and, before CUDA is initialised, record a stack trace per call for its lazy
    seeding, 4% of a demo step on the CPU.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]
