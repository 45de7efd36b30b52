"""Layers of skd: InPlace-ABN (`inplace_abn`), the fused pair-wise affinity distance
(`affinity`) and the `--norm` factory (`norm`). The C++/CUDA kernels behind the first two are
built on first use by `skd.ext`, not on import.
"""
from skd.nn.affinity import affinity_distance
from skd.nn.inplace_abn import InPlaceABN, InPlaceABNSync

__all__ = ["InPlaceABN", "InPlaceABNSync", "affinity_distance"]
