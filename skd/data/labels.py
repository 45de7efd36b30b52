"""Cityscapes label definitions: train-id classes, colours, the image mean and the id look-ups.

Read by the dataset (labelIds -> train ids), the transforms (mean), the evaluation and the
test-set writer (train ids -> labelIds, colour previews). The mapping is the one of the original
SKD code (networks/evaluate.py lines 23-28) and the official cityscapesScripts.
"""
import numpy as np

NUM_CLASSES = 19
IGNORE_INDEX = 255

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# BGR, because images are read by OpenCV; subtracted without dividing by a std. The original's
# training and validation loader subtracts it as this float32 array from a float32 image (SKD
# train_and_eval.py line 10, dataset/datasets.py line 183), and so does skd's InputSpec
# (skd.models.convention.SKD_INPUT): the same arithmetic, bit for bit. IMG_MEAN_F64 holds the
# literal constants (the original's test-set loader subtracts those, datasets.py line 217).
IMG_MEAN_F64 = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float64)
IMG_MEAN = IMG_MEAN_F64.astype(np.float32)

# Official cityscapesScripts colours, RGB, one row per train id.
PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
        (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)

# Colour of every labelId 0..33, RGB, as in the gtFine *_color.png files: cityscapesScripts,
# cityscapesscripts/helpers/labels.py, the `color` column of `labels` (lines 64-97).
LABEL_ID_COLORS = np.zeros((256, 3), dtype=np.uint8)
LABEL_ID_COLORS[:34] = [
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0), (81, 0, 81),
    (128, 64, 128), (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70),
    (102, 102, 156), (190, 153, 153), (180, 165, 180), (150, 100, 100), (150, 120, 90),
    (153, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35),
    (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]
# labelIds whose objects are told apart in *_instanceIds.png (hasInstances in labels.py):
# person, rider, car, truck, bus, caravan, trailer, train, motorcycle, bicycle.
INSTANCE_LABEL_IDS = (24, 25, 26, 27, 28, 29, 30, 31, 32, 33)

# labelId of each train id, in train-id order; 29 (caravan) and 30 (trailer) are ignored.
_TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

# Largest labelId in the labelIds PNGs (33 = bicycle); -1 (license plate) never occurs in them.
MAX_LABEL_ID = 33


def _build_luts() -> tuple[np.ndarray, np.ndarray]:
    """Both 256-entry uint8 look-up tables, so a uint8 image maps with one fancy index."""
    to_train = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    to_label = np.zeros(256, dtype=np.uint8)
    for train_id, label_id in enumerate(_TRAIN_LABEL_IDS):
        to_train[label_id] = train_id
        to_label[train_id] = label_id
    return to_train, to_label


LABEL_ID_TO_TRAIN_ID, TRAIN_ID_TO_LABEL_ID = _build_luts()
LABEL_ID_TO_TRAIN_ID.flags.writeable = False
TRAIN_ID_TO_LABEL_ID.flags.writeable = False

_COLOR_LUT = np.zeros((256, 3), dtype=np.uint8)
_COLOR_LUT[:NUM_CLASSES] = PALETTE
_COLOR_LUT.flags.writeable = False
PALETTE.flags.writeable = False
LABEL_ID_COLORS.flags.writeable = False
IMG_MEAN.flags.writeable = False
IMG_MEAN_F64.flags.writeable = False


def _lookup(values: np.ndarray, lut: np.ndarray, outside: int) -> np.ndarray:
    """Index `lut` with integer `values`; values outside 0..255 get `outside`."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return lut[values]
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"expected an integer label array, got dtype {values.dtype}")
    inside = (values >= 0) & (values <= 255)
    out = np.full(values.shape + lut.shape[1:], outside, dtype=lut.dtype)
    out[inside] = lut[values[inside]]
    return out


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes labelIds to train ids.

    Args:
        label_ids: integer array of any shape, e.g. (H, W) as read from a `*_labelIds.png`.
    Returns:
        uint8 array of the same shape: 0..18, or 255 for every id that is not evaluated
        (0-6, 9, 10, 14-16, 18, 29, 30, -1 and anything above 33).
    """
    return _lookup(label_ids, LABEL_ID_TO_TRAIN_ID, IGNORE_INDEX)


def to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map train ids back to Cityscapes labelIds (for test-server submissions).

    Args:
        train_ids: integer array of any shape, e.g. (H, W) predictions in 0..18.
    Returns:
        uint8 array of the same shape; anything that is not a train id (255 included) becomes
        0 ("unlabeled"), which the benchmark does not score.
    """
    return _lookup(train_ids, TRAIN_ID_TO_LABEL_ID, 0)


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Colour a (H, W) train-id map with the Cityscapes palette.

    Returns:
        (H, W, 3) uint8 RGB; ignore (255) and any other non-class value are black.
    """
    train_ids = np.asarray(train_ids)
    if train_ids.ndim != 2:
        raise ValueError(f"colorize expects a (H, W) train-id map, got shape {train_ids.shape}")
    return _lookup(train_ids, _COLOR_LUT, 0)
