from .decoded import DecodedImages, decode_square
from .folders import DecodedDataset, ImageBatches, batch_order, step_share, view_schedule
from .images import IMAGE_EXTENSIONS, load_image
from .scan import BadFile, DataScan, Sample, check_image, scan_data
from .unlabeled import find_unlabeled_images
from .transforms import AUGMENTS, augment_key, build_batch_mix, build_eval_transform, build_train_transform, decode_size_for, make_view

__all__ = ["AUGMENTS", "augment_key", "build_batch_mix", "BadFile", "DataScan", "DecodedDataset", "DecodedImages", "IMAGE_EXTENSIONS",
           "ImageBatches", "Sample", "batch_order", "build_eval_transform", "build_train_transform",
           "check_image", "decode_size_for", "decode_square", "find_unlabeled_images", "load_image", "make_view", "scan_data",
           "step_share", "view_schedule"]
