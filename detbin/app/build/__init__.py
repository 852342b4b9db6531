"""The only place where configuration becomes objects.

A recipe file (validated by :mod:`detbin.config`) becomes, in this fixed order:

1. the recipe class (an installed entry point, or ``module:Class`` typed on the command line)
   and its validated ``params`` (:mod:`~detbin.app.build.models`);
2. the teacher (a detbin checkpoint or a torchvision state dict), frozen;
3. the student: a deep copy of the teacher (or of another architecture, ``student.init``),
   binarized by ``recipe.binarize(student, spec)``;
4. ``recipe.prepare(student, teacher)`` (called by the runner, after the data set is known);
5. the optimizer from ``recipe.param_groups(student)``, the LR schedule, the run's length
   (:mod:`~detbin.app.build.optim`);
6. data sets, loaders, the evaluator (:mod:`~detbin.app.build.data`), then the trainer and its hooks.

Without a recipe (``detbin train``) steps 1-3 reduce to building a real-valued detector.
Constructors elsewhere take plain typed arguments and never see a config object.
"""

from __future__ import annotations

from detbin.app.build.data import (DATASETS, Evaluation, build_dataset, build_evaluator, dataset_classes,
                                   open_eval_dataset, test_loader, train_loader)
from detbin.app.build.models import (SHAPE_FIELDS, Models, build_models, build_recipe, layout_spec, load_model,
                                     load_target, load_teacher, make_student, merge_detector, student_base)
from detbin.app.build.optim import Plan, build_optimizer, build_scheduler, plan_iterations

__all__ = ["DATASETS", "Evaluation", "build_dataset", "build_evaluator", "dataset_classes", "open_eval_dataset",
           "test_loader", "train_loader", "SHAPE_FIELDS", "Models", "build_models", "build_recipe", "layout_spec",
           "load_model", "load_target", "load_teacher", "make_student", "merge_detector", "student_base", "Plan",
           "build_optimizer", "build_scheduler", "plan_iterations"]
