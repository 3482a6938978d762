from .folders import ImageListDataset
from .images import IMAGE_EXTENSIONS, load_image
from .scan import BadFile, DataScan, Sample, check_image, scan_data
from .transforms import AUGMENTS, build_eval_transform, build_train_transform

__all__ = ["AUGMENTS", "BadFile", "DataScan", "IMAGE_EXTENSIONS", "ImageListDataset", "Sample",
           "build_eval_transform", "build_train_transform", "check_image", "load_image", "scan_data"]
