"""A stand-in for detectron2, following its documented model interface, for detbin's adapter tests.

Only what detbin's ``detectron2`` family touches: ``config.get_cfg`` (a CfgNode with
``merge_from_file``/``merge_from_list``), ``modeling.build_model`` (a meta-architecture taking
``batched_inputs`` and returning a loss dict in training, ``[{"instances": ...}]`` in eval) and
``structures.Boxes``/``Instances``. The meta-architecture wraps a tiny torchvision Faster R-CNN
so its numbers are real; it is not detectron2 and proves only that detbin speaks the interface.
"""
