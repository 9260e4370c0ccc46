"""Issue 8, bad input: a table of malformed calls across the public API. Each must raise ValueError or
TypeError whose message names the offending argument, before any kernel runs.

This is the one table of bad input: the other test files test behaviour, not argument checks.
The whole table runs in ONE subprocess per device that prints one JSON line per case, so a crash
(segfault, abort) fails the cases it did not reach instead of killing pytest; the test then asserts
per case. On a GPU the table runs with torch's default device set to it (every tensor and layer a
case makes is on the GPU), plus the cases that put one argument on the CPU.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import CUDA, CUDA_ON_CPU, DEVICES

# Objects the cases use (built once in the subprocess).
PRELUDE = r"""
import math, os, tempfile
import numpy as np
import torch
from torch import nn
import rbfkern
from rbfkern import ops, explain
from rbfkern.nn import (RBF, RBFClassifier, RBFNetwork, BcosConv2d, BcosLinear, GaussDerivConv2d,
                        GaussDerivConv3d, kmeans, init_centers, similar, cluster_contributions)
from rbfkern.mcu import export_c

# The table's device: every tensor and layer made below or in a case lands there.
dev = torch.device(os.environ.get("RBFKERN_BAD_INPUT_DEVICE", "cpu"))
torch.set_default_device(dev)
torch.manual_seed(0)
x = torch.randn(6, 3)
c = torch.randn(4, 3)
img = torch.randn(2, 4, 8, 8)
w = torch.randn(6, 4, 3, 3)
wl = torch.randn(5, 3)
xg = torch.randn(1, 2, 12, 12)
ag = torch.randn(3, 2, 6)  # order 2: M = 6, one scale
xg3 = torch.randn(1, 2, 7, 7, 7)
ag3 = torch.randn(3, 2, 4)  # order 1 in 3D: M = 4
nan, inf = float("nan"), float("inf")
meta = lambda t: t.to("meta")
tmp = tempfile.mkdtemp()
head = RBFClassifier(3, 4, 2)
fitted = RBFNetwork(3, centers="random").fit(torch.randn(20, 3), torch.randn(20))
bmodel = nn.Sequential(BcosLinear(3, 4), BcosLinear(4, 2))
six = torch.rand(6, 8, 8)
"""

# (id, statement, expected exception types, regex the message must match: the argument's name)
CASES = [
    # --- rbf / rbf_r2 ------------------------------------------------------------------------
    ("rbf_r2/x_3d", "ops.rbf_r2(x[None], c)", "ValueError", r"\bx\b"),
    ("rbf_r2/x_list", "ops.rbf_r2(x.tolist(), c)", "TypeError", r"\bx\b"),
    ("rbf_r2/x_int", "ops.rbf_r2(x.long(), c)", "TypeError", r"\bx\b"),
    ("rbf_r2/centers_wrong_D", "ops.rbf_r2(x, torch.randn(4, 5))", "ValueError", r"centers"),
    ("rbf_r2/centers_f64", "ops.rbf_r2(x, c.double())", "TypeError", r"centers"),
    ("rbf_r2/centers_meta", "ops.rbf_r2(x, meta(c))", "ValueError", r"centers"),
    ("rbf_r2/diag_shape", "ops.rbf_r2(x, c, diag=torch.rand(4, 2))", "ValueError", r"diag"),
    ("rbf_r2/diag_negative", "ops.rbf_r2(x, c, diag=-torch.rand(4, 3))", "ValueError", r"diag"),
    ("rbf_r2/diag_nan", "ops.rbf_r2(x, c, diag=torch.full((3,), nan))", "ValueError", r"diag"),
    ("rbf_r2/diag_and_tril", "ops.rbf_r2(x, c, diag=torch.rand(3), tril=torch.eye(3))", "ValueError", r"diag.*tril"),
    ("rbf_r2/tril_inf", "ops.rbf_r2(x, c, tril=torch.full((3, 3), inf))", "ValueError", r"tril"),
    ("rbf_r2/tril_shape", "ops.rbf_r2(x, c, tril=torch.eye(4))", "ValueError", r"tril"),
    ("rbf/sigma_zero", "ops.rbf(x, c, sigma=0.0)", "ValueError", r"sigma"),
    ("rbf/sigma_nan", "ops.rbf(x, c, sigma=nan)", "ValueError", r"sigma"),
    ("rbf/sigma_inf", "ops.rbf(x, c, sigma=inf)", "ValueError", r"sigma"),
    ("rbf/sigma_negative_tensor", "ops.rbf(x, c, sigma=-torch.ones(4))", "ValueError", r"sigma"),
    ("rbf/sigma_wrong_len", "ops.rbf(x, c, sigma=torch.ones(5))", "ValueError", r"sigma"),
    ("rbf/sigma_str", "ops.rbf(x, c, sigma='1')", "TypeError", r"sigma"),
    ("rbf/sigma_meta", "ops.rbf(x, c, sigma=meta(torch.ones(4)))", "ValueError", r"sigma"),
    ("rbf/sigma_overflows_dtype", "ops.rbf(x, c, sigma=1e300)", "ValueError", r"sigma"),
    ("rbf/kind_unknown", "ops.rbf(x, c, kind='gauss')", "ValueError", r"kind"),
    ("rbf/shape_negative_mq", "ops.rbf(x, c, kind='multiquadric', shape=-1.0)", "ValueError", r"shape"),
    ("rbf/shape_nan", "ops.rbf(x, c, kind='logistic', shape=nan)", "ValueError", r"shape"),
    ("rbf/x_1d", "ops.rbf(torch.randn(4), c)", "ValueError", r"\bx\b"),
    ("rbf/centers_1d", "ops.rbf(x, torch.randn(5))", "ValueError", r"centers"),
    ("rbf/diag_wrong_D", "ops.rbf(x, c, diag=torch.rand(4))", "ValueError", r"diag"),
    ("rbf/tril_wrong_C", "ops.rbf(x, c, tril=torch.rand(5, 3, 3))", "ValueError", r"tril"),
    ("rbf/kind_int", "ops.rbf(x, c, kind=3)", "ValueError", r"kind"),
    ("rbf/sigma_negative", "ops.rbf(x, c, sigma=-1.0)", "ValueError", r"sigma"),
    ("rbf/sigma_2d", "ops.rbf(x, c, sigma=torch.ones(4, 1))", "ValueError", r"sigma"),
    ("rbf/shape_inf", "ops.rbf(x, c, shape=inf)", "ValueError", r"shape"),
    ("rbf_r2/x_1d", "ops.rbf_r2(torch.randn(3), c)", "ValueError", r"\bx\b"),
    # --- bcos -----------------------------------------------------------------------------
    ("bcos_conv2d/x_3d", "ops.bcos_conv2d(img[0], w)", "ValueError", r"\bx\b"),
    ("bcos_conv2d/weight_channels", "ops.bcos_conv2d(img, torch.randn(6, 3, 3, 3))", "ValueError", r"weight"),
    ("bcos_conv2d/weight_f64", "ops.bcos_conv2d(img, w.double())", "TypeError", r"weight"),
    ("bcos_conv2d/weight_meta", "ops.bcos_conv2d(img, meta(w))", "ValueError", r"weight"),
    ("bcos_conv2d/b_zero", "ops.bcos_conv2d(img, w, b=0.0)", "ValueError", r"\bb\b"),
    ("bcos_conv2d/b_nan", "ops.bcos_conv2d(img, w, b=nan)", "ValueError", r"\bb\b"),
    ("bcos_conv2d/max_out_zero", "ops.bcos_conv2d(img, w, max_out=0)", "ValueError", r"max_out"),
    ("bcos_conv2d/max_out_indivisible", "ops.bcos_conv2d(img, w, max_out=4)", "ValueError", r"max_out"),
    ("bcos_conv2d/stride_zero", "ops.bcos_conv2d(img, w, stride=0)", "ValueError", r"stride"),
    ("bcos_conv2d/padding_negative", "ops.bcos_conv2d(img, w, padding=-1)", "ValueError", r"padding"),
    ("bcos_conv2d/dilation_triple", "ops.bcos_conv2d(img, w, dilation=(1, 1, 1))", "TypeError", r"dilation"),
    ("bcos_conv2d/groups_indivisible", "ops.bcos_conv2d(img, torch.randn(6, 4, 3, 3), groups=3)", "ValueError",
     r"groups"),
    ("bcos_conv2d/kernel_too_big", "ops.bcos_conv2d(img, torch.randn(6, 4, 9, 9))", "ValueError",
     r"\bx\b.*kernel|kernel.*\bx\b"),
    ("bcos_conv2d/weight_no_filters", "ops.bcos_conv2d(img, torch.randn(0, 4, 3, 3))", "ValueError", r"weight"),
    ("bcos_conv2d/no_channels", "ops.bcos_conv2d(torch.randn(1, 0, 5, 5), torch.randn(2, 0, 3, 3))", "ValueError",
     r"\bx\b|weight"),
    ("bcos_conv2d/stride_float", "ops.bcos_conv2d(img, w, stride=1.5)", "TypeError", r"stride"),
    ("bcos_conv2d/explain_str", "ops.bcos_conv2d(img, w, explain='yes')", "TypeError", r"explain"),
    ("bcos_linear/weight_cols", "ops.bcos_linear(x, torch.randn(5, 4))", "ValueError", r"weight"),
    ("bcos_linear/weight_f64", "ops.bcos_linear(x, wl.double())", "TypeError", r"weight"),
    ("bcos_linear/x_scalar", "ops.bcos_linear(torch.tensor(1.0), wl)", "ValueError", r"\bx\b"),
    ("bcos_linear/zero_features", "ops.bcos_linear(torch.randn(2, 0), torch.randn(4, 0))", "ValueError",
     r"\bx\b|weight"),
    ("bcos_linear/weight_no_rows", "ops.bcos_linear(x, torch.randn(0, 3))", "ValueError", r"weight"),
    ("bcos_linear/max_out_bool", "ops.bcos_linear(x, wl, max_out=True)", "ValueError|TypeError", r"max_out"),
    ("bcos_conv2d/weight_3d", "ops.bcos_conv2d(img, w[:, :, 0])", "ValueError", r"weight"),
    ("bcos_conv2d/b_negative", "ops.bcos_conv2d(img, w, b=-1.0)", "ValueError", r"\bb\b"),
    ("bcos_conv2d/x_int", "ops.bcos_conv2d(img.int(), w)", "TypeError", r"\bx\b"),
    ("bcos_conv2d/padding_triple", "ops.bcos_conv2d(img, w, padding=(1, 2, 3))", "TypeError", r"padding"),
    ("bcos_conv2d/explain_int", "ops.bcos_conv2d(img, w, explain=1)", "TypeError", r"explain"),
    ("bcos_conv2d/x_numpy", "ops.bcos_conv2d(img.cpu().numpy(), w)", "TypeError", r"\bx\b"),
    ("bcos_linear/max_out_indivisible", "ops.bcos_linear(x, wl, max_out=3)", "ValueError", r"max_out"),
    # --- gauss_deriv ----------------------------------------------------------------------
    ("gauss_deriv_conv2d/x_3d", "ops.gauss_deriv_conv2d(xg[0], ag, 1.0, order=2)", "ValueError", r"\bx\b"),
    ("gauss_deriv_conv2d/alpha_shape", "ops.gauss_deriv_conv2d(xg, torch.randn(3, 2, 5), 1.0, order=2)",
     "ValueError", r"alpha"),
    ("gauss_deriv_conv2d/alpha_no_outputs", "ops.gauss_deriv_conv2d(xg, torch.randn(0, 2, 6), 1.0, order=2)",
     "ValueError", r"alpha"),
    ("gauss_deriv_conv2d/order_negative", "ops.gauss_deriv_conv2d(xg, ag, 1.0, order=-1)", "ValueError", r"order"),
    ("gauss_deriv_conv2d/truncate_inf", "ops.gauss_deriv_conv2d(xg, ag, 1.0, order=2, truncate=inf)", "ValueError",
     r"truncate"),
    ("gauss_deriv_conv2d/alpha_meta", "ops.gauss_deriv_conv2d(xg, meta(ag), 1.0, order=2)", "ValueError", r"alpha"),
    ("gauss_deriv_conv2d/alpha_f64", "ops.gauss_deriv_conv2d(xg, ag.double(), 1.0, order=2)", "TypeError",
     r"alpha"),
    ("gauss_deriv_conv2d/sigma_zero", "ops.gauss_deriv_conv2d(xg, ag, 0.0, order=2)", "ValueError", r"sigma"),
    ("gauss_deriv_conv2d/sigma_nan", "ops.gauss_deriv_conv2d(xg, ag, nan, order=2)", "ValueError", r"sigma"),
    ("gauss_deriv_conv2d/sigma_negative_tensor", "ops.gauss_deriv_conv2d(xg, ag, torch.tensor([-1.0]), order=2)",
     "ValueError", r"sigma"),
    ("gauss_deriv_conv2d/sigma_huge", "ops.gauss_deriv_conv2d(xg, ag, 1e6, order=2)", "ValueError", r"sigma"),
    ("gauss_deriv_conv2d/sigma_empty", "ops.gauss_deriv_conv2d(xg, ag, [], order=2)", "ValueError", r"sigma"),
    ("gauss_deriv_conv2d/sigma_2d", "ops.gauss_deriv_conv2d(xg, ag, torch.ones(1, 1), order=2)", "ValueError",
     r"sigma"),
    ("gauss_deriv_conv2d/order_high", "ops.gauss_deriv_conv2d(xg, ag, 1.0, order=7)", "ValueError", r"order"),
    ("gauss_deriv_conv2d/order_float", "ops.gauss_deriv_conv2d(xg, ag, 1.0, order=2.0)", "TypeError", r"order"),
    ("gauss_deriv_conv2d/truncate_negative", "ops.gauss_deriv_conv2d(xg, ag, 1.0, order=2, truncate=-1.0)",
     "ValueError", r"truncate"),
    ("gauss_deriv_conv2d/stride_zero", "ops.gauss_deriv_conv2d(xg, ag, 1.0, order=2, stride=0)", "ValueError",
     r"stride"),
    ("gauss_deriv_conv2d/padding_negative", "ops.gauss_deriv_conv2d(xg, ag, 1.0, order=2, padding=-2)",
     "ValueError", r"padding"),
    ("gauss_deriv_conv2d/padding_valid", "ops.gauss_deriv_conv2d(xg, ag, 1.0, order=2, padding='valid')",
     "ValueError", r"padding"),
    ("gauss_deriv_conv2d/x_smaller_than_kernel", "ops.gauss_deriv_conv2d(xg[..., :5, :5], ag, 1.0, order=2, padding=0)",
     "ValueError", r"\bx\b"),
    ("gauss_deriv_conv3d/x_4d", "ops.gauss_deriv_conv3d(xg, ag3, 1.0, order=1)", "ValueError", r"\bx\b"),
    ("gauss_deriv_conv3d/sigma_huge", "ops.gauss_deriv_conv3d(xg3, ag3, 1e6, order=1)", "ValueError", r"sigma"),
    ("gauss_deriv_conv3d/alpha_shape", "ops.gauss_deriv_conv3d(xg3, ag, 1.0, order=1)", "ValueError", r"alpha"),
    # --- nn layers ------------------------------------------------------------------------
    ("RBF/in_features_zero", "RBF(0, 4)", "ValueError", r"in_features"),
    ("RBF/num_centers_negative", "RBF(3, -1)", "ValueError", r"num_centers"),
    ("RBF/metric_unknown", "RBF(3, 4, metric='cosine')", "ValueError", r"metric"),
    ("RBF/kind_unknown", "RBF(3, 4, kind='relu')", "ValueError", r"kind"),
    ("RBF/sigma_negative", "RBF(3, 4, sigma=-1.0)", "ValueError", r"sigma"),
    ("RBF/sigma_wrong_len", "RBF(3, 4, sigma=torch.ones(5))", "ValueError", r"sigma"),
    ("RBF/forward_wrong_D", "RBF(3, 4)(torch.randn(2, 5))", "ValueError", r"\bx\b"),
    ("RBF/forward_int", "RBF(3, 4)(torch.ones(2, 3, dtype=torch.long))", "TypeError", r"\bx\b"),
    ("RBF/forward_f64", "RBF(3, 4)(torch.randn(2, 3, dtype=torch.float64))", "TypeError", r"\bx\b|centers"),
    ("RBF/num_centers_float", "RBF(3, 2.5)", "ValueError", r"num_centers"),
    ("RBF/shape_zero_mq", "RBF(3, 2, kind='multiquadric', shape=0.0)", "ValueError", r"shape"),
    ("RBF/forward_list", "RBF(3, 2)([1.0, 2.0, 3.0])", "TypeError", r"\bx\b"),
    ("RBFClassifier/loss_without_r2", "RBFClassifier.loss(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), None, 0.5)",
     "ValueError", r"r2"),
    ("RBFClassifier/num_classes_zero", "RBFClassifier(3, 4, 0)", "ValueError", r"num_classes"),
    ("BcosConv2d/groups_indivisible", "BcosConv2d(3, 4, groups=2)", "ValueError", r"groups"),
    ("BcosConv2d/in_channels_negative", "BcosConv2d(-1, 4)", "ValueError", r"in_channels"),
    ("BcosConv2d/kernel_size_zero", "BcosConv2d(4, 4, kernel_size=0)", "ValueError", r"kernel_size"),
    ("BcosConv2d/b_negative", "BcosConv2d(4, 4, b=-1.0)", "ValueError", r"\bb\b"),
    ("BcosConv2d/forward_channels", "BcosConv2d(3, 4, kernel_size=3)(img)", "ValueError", r"\bx\b|weight"),
    ("BcosLinear/in_features_zero", "BcosLinear(0, 4)", "ValueError", r"in_features"),
    ("BcosLinear/out_features_zero", "BcosLinear(3, 0)", "ValueError", r"out_features"),
    ("BcosLinear/max_out_zero", "BcosLinear(3, 4, max_out=0)", "ValueError", r"max_out"),
    ("GaussDerivConv2d/order_high", "GaussDerivConv2d(2, 3, order=9)", "ValueError", r"order"),
    ("GaussDerivConv2d/sigmas_zero", "GaussDerivConv2d(2, 3, sigmas=(0.0,))", "ValueError", r"sigma"),
    ("GaussDerivConv2d/in_channels_zero", "GaussDerivConv2d(0, 3)", "ValueError", r"in_channels"),
    ("GaussDerivConv2d/sigmas_huge", "GaussDerivConv2d(2, 3, sigmas=1e6)", "ValueError", r"sigma"),
    ("GaussDerivConv2d/forward_channels", "GaussDerivConv2d(3, 3, order=2)(xg)", "ValueError", r"\bx\b|alpha"),
    ("GaussDerivConv3d/truncate_nan", "GaussDerivConv3d(2, 3, truncate=nan)", "ValueError", r"truncate"),
    # --- k-means / init_centers -------------------------------------------------------------
    ("kmeans/k_zero", "kmeans(x, 0)", "ValueError", r"\bk\b"),
    ("kmeans/x_1d", "kmeans(x[0], 2)", "ValueError", r"\bx\b|embeddings"),
    ("kmeans/too_few_rows", "kmeans(x, 10)", "ValueError", r"\bx\b|embeddings"),
    ("kmeans/init_unknown", "kmeans(x, 2, init='bogus')", "ValueError", r"init"),
    ("kmeans/init_shape", "kmeans(x, 2, init=torch.randn(3, 3))", "ValueError", r"init"),
    ("kmeans/x_nan", "kmeans(torch.full((6, 3), nan), 2)", "ValueError", r"\bx\b|embeddings"),
    ("kmeans/max_iter_negative", "kmeans(x, 2, max_iter=-1)", "ValueError", r"max_iter"),
    ("kmeans/n_init_zero", "kmeans(x, 2, n_init=0)", "ValueError", r"n_init"),
    ("kmeans/diag_negative", "kmeans(x, 2, diag=-torch.ones(3))", "ValueError", r"diag"),
    ("kmeans/more_centers_than_rows", "kmeans(torch.randn(3, 2), 5)", "ValueError", r"num_centers"),
    ("kmeans/batches_mixed_D", "kmeans([torch.randn(4, 2), torch.randn(4, 3)], 2)", "ValueError", r"embeddings batches"),
    ("kmeans/empty_iterable", "kmeans(iter([]), 2)", "ValueError", r"empty iterable"),
    ("kmeans/distributed_without_group", "kmeans(torch.randn(5, 2), 2, distributed=True)", "ValueError",
     r"distributed=True"),
    ("kmeans/process_group_bogus", "kmeans(torch.randn(5, 2), 2, process_group=object())", "ValueError",
     r"process_group"),
    ("init_centers/distributed_without_group", "init_centers(RBF(3, 2), torch.randn(10, 3), distributed=True)",
     "ValueError", r"distributed=True"),
    ("init_centers/embeddings_wrong_D", "init_centers(RBF(3, 4), torch.randn(10, 5))", "ValueError", r"embeddings"),
    ("init_centers/not_rbf", "init_centers(nn.Linear(3, 4), torch.randn(10, 3))", "TypeError", r"module"),
    ("init_centers/method_unknown", "init_centers(RBF(3, 4), torch.randn(10, 3), method='grid')", "ValueError",
     r"method"),
    # --- retrieval ----------------------------------------------------------------------------
    ("similar/query_1d", "similar(x[0], c, 1)", "ValueError", r"query"),
    ("similar/bank_wrong_D", "similar(x, torch.randn(4, 5), 1)", "ValueError", r"bank"),
    ("similar/k_zero", "similar(x, c, 0)", "ValueError", r"\bk\b"),
    ("similar/k_too_big", "similar(x, c, 5)", "ValueError", r"\bk\b"),
    ("similar/bank_f64", "similar(x, c.double(), 1)", "TypeError", r"bank"),
    ("similar/bank_meta", "similar(x, meta(c), 1)", "ValueError", r"bank"),
    ("similar/metric_module_wrong_D", "similar(x, c, 1, metric_module=RBF(5, 2))", "ValueError",
     r"metric_module|in_features"),
    ("similar/metric_module_linear", "similar(x, c, 1, metric_module=nn.Linear(3, 3))", "TypeError",
     r"metric_module"),
    ("cluster_contributions/model_rbf", "cluster_contributions(RBF(3, 2), torch.randn(2, 3))", "TypeError", r"model"),
    # --- RBFNetwork ---------------------------------------------------------------------------
    ("RBFNetwork/num_centers_zero", "RBFNetwork(0)", "ValueError", r"num_centers"),
    ("RBFNetwork/lam_negative", "RBFNetwork(3, lam=-1.0)", "ValueError", r"lam"),
    ("RBFNetwork/task_unknown", "RBFNetwork(3, task='clustering')", "ValueError", r"task"),
    ("RBFNetwork/centers_unknown", "RBFNetwork(3, centers='grid')", "ValueError", r"centers"),
    ("RBFNetwork/sigma_negative", "RBFNetwork(3, sigma=-1.0)", "ValueError", r"sigma"),
    ("RBFNetwork/fit_one_row", "RBFNetwork(3).fit(torch.randn(1, 2), torch.randn(1))", "ValueError", r"\bX\b"),
    ("RBFNetwork/fit_y_len", "RBFNetwork(3).fit(torch.randn(10, 2), torch.randn(9))", "ValueError", r"\by\b"),
    ("RBFNetwork/fit_X_nan", "RBFNetwork(3).fit(torch.full((10, 2), nan), torch.randn(10))", "ValueError",
     r"\bX\b"),
    ("RBFNetwork/fit_labels_float", "RBFNetwork(3, task='classification').fit(torch.randn(10, 2), torch.rand(10))",
     "ValueError", r"\by\b"),
    ("RBFNetwork/forward_wrong_D", "fitted(torch.randn(2, 5))", "ValueError", r"\bx\b"),
    ("RBFNetwork/metric_unknown", "RBFNetwork(3, metric='foo')", "ValueError", r"metric"),
    ("RBFNetwork/centers_tensor_wrong_count", "RBFNetwork(3, centers=torch.zeros(2, 2))", "ValueError", r"centers"),
    ("RBFNetwork/sigma_zero", "RBFNetwork(3, sigma=0.0)", "ValueError", r"sigma"),
    ("RBFNetwork/forward_unfitted", "RBFNetwork(2)(torch.zeros(3, 2))", "RuntimeError", r"not fitted"),
    ("RBFNetwork/fit_more_centers_than_rows", "RBFNetwork(9).fit(torch.randn(5, 2), torch.randn(5))", "ValueError",
     r"num_centers"),
    ("RBFNetwork/select_criterion", "RBFNetwork(2).select(torch.randn(5, 2), torch.randn(5), criterion='aic')",
     "ValueError", r"criterion"),
    ("RBFNetwork/select_lam_grid", "RBFNetwork(2).select(torch.randn(5, 2), torch.randn(5), lam_grid=[-1])",
     "ValueError", r"lam_grid"),
    # --- explain --------------------------------------------------------------------------------
    ("dynamic_linear_map/x_list", "explain.dynamic_linear_map(bmodel, [[1.0, 2.0, 3.0]], 0)", "TypeError", r"\bx\b"),
    ("dynamic_linear_map/target_count", "explain.dynamic_linear_map(bmodel, torch.randn(2, 3), [0, 1, 1])",
     "ValueError", r"target"),
    ("dynamic_linear_map/target_out_of_range", "explain.dynamic_linear_map(bmodel, torch.randn(2, 3), 7)",
     "ValueError", r"target"),
    ("explanation_image/image_3ch", "explain.explanation_image(six[:3], six[:3])", "ValueError", r"image"),
    ("explanation_image/alpha_percentile", "explain.explanation_image(six, six, alpha_percentile=150.0)",
     "ValueError", r"alpha_percentile"),
    ("explanation_image/smooth_negative", "explain.explanation_image(six, six, smooth=-1)", "ValueError",
     r"smooth"),
    # --- mcu.export_c -------------------------------------------------------------------------
    ("export_c/model_linear", "export_c(nn.Linear(2, 2), tmp)", "TypeError", r"model"),
    ("export_c/model_unfitted", "export_c(RBFNetwork(3), tmp)", "TypeError", r"model"),
    ("export_c/dtype_unknown", "export_c(head, tmp, dtype='f16')", "ValueError", r"dtype"),
    ("export_c/name_invalid", "export_c(head, tmp, name='1 bad-name')", "ValueError", r"name"),
    ("export_c/centers_nan", "export_c((RBF(3, 2, metric='none', kind='gaussian').requires_grad_(False)"
     ".apply(lambda m: m.centers.fill_(nan) if isinstance(m, RBF) else None), nn.Linear(2, 1)), tmp)",
     "ValueError", r"centers"),
    ("export_c/calib_wrong_D", "export_c(fitted, tmp, dtype='q15', calib=torch.randn(5, 7))", "ValueError",
     r"calib"),
    ("export_c/q15_full_metric", "export_c((RBF(3, 2, metric='full'), nn.Linear(2, 1)), tmp, dtype='q15')",
     "ValueError", r"q15 export supports"),
    ("export_c/q15_linear_kind", "export_c((RBF(3, 2, kind='linear'), nn.Linear(2, 1)), tmp, dtype='q15')",
     "ValueError", r"q15 export supports"),
]

# Arguments on two devices: these need a GPU beside the CPU (the table runs on the GPU, one
# argument is moved to the CPU).
TWO_DEVICE_CASES = [
    ("rbf/centers_other_device", "ops.rbf(x, c.cpu())", "ValueError", r"centers"),
    ("rbf/diag_other_device", "ops.rbf(x, c, diag=torch.rand(3, device='cpu'))", "ValueError", r"diag"),
    ("bcos_conv2d/weight_other_device", "ops.bcos_conv2d(img, w.cpu())", "ValueError", r"weight is on cpu"),
    ("bcos_conv2d/x_other_device", "ops.bcos_conv2d(img.cpu(), w)", "ValueError", r"weight is on cuda"),
    ("bcos_linear/weight_other_device", "ops.bcos_linear(x, wl.cpu())", "ValueError", r"weight is on cpu"),
    ("bcos_linear/x_other_device", "ops.bcos_linear(x.cpu(), wl)", "ValueError", r"weight is on cuda"),
    ("gauss_deriv_conv2d/alpha_other_device", "ops.gauss_deriv_conv2d(xg, ag.cpu(), 1.0, order=2)", "ValueError",
     r"alpha is on cpu"),
    ("gauss_deriv_conv2d/sigma_other_device", "ops.gauss_deriv_conv2d(xg, ag, torch.ones(1, device='cpu'), order=2)",
     "ValueError", r"sigma is on cpu"),
    ("gauss_deriv_conv2d/x_other_device", "ops.gauss_deriv_conv2d(xg.cpu(), ag, torch.ones(1), order=2)",
     "ValueError", r"sigma is on cuda"),
]

RUNNER = r"""
import json, sys, traceback
ns = {}
exec(PRELUDE, ns)
for cid, stmt in CASES:
    res = {"id": cid}
    try:
        exec(stmt, dict(ns))
        res["exc"] = None
    except BaseException as e:  # noqa: BLE001 - every outcome is reported, KeyboardInterrupt too
        res["exc"] = type(e).__name__
        res["msg"] = str(e)[:500]
        res["where"] = traceback.extract_tb(e.__traceback__)[-1].filename.replace("\\\\", "/")
    print(json.dumps(res), flush=True)
print(json.dumps({"id": "__done__"}), flush=True)
"""


_RESULTS = {}


def _results(where: str) -> dict:
    """{case id: outcome} of the whole table on one device ("cpu", or "cuda": the GPU, or in the
    rehearsal on a machine without one the CPU through the interpreted Triton kernels), run once."""
    if where not in _RESULTS:
        on_gpu = where == "cuda" and not CUDA_ON_CPU
        cases = CASES + (TWO_DEVICE_CASES if on_gpu else [])
        script = f"PRELUDE = {PRELUDE!r}\nCASES = {[(c[0], c[1]) for c in cases]!r}\n{RUNNER}"
        env = dict(os.environ, RBFKERN_BACKEND="triton" if where == "cuda" and CUDA_ON_CPU else "cpp",
                   RBFKERN_BAD_INPUT_DEVICE="cuda" if on_gpu else "cpu", PYTHONFAULTHANDLER="1")
        if on_gpu:
            env.pop("RBFKERN_BACKEND")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
        out = {}
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                out[rec["id"]] = rec
        out["__proc__"] = {"rc": proc.returncode, "stderr": proc.stderr[-3000:]}
        _RESULTS[where] = out
    return _RESULTS[where]


def test_table_is_large_and_unique():
    ids = [c[0] for c in CASES + TWO_DEVICE_CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("where", DEVICES)
def test_subprocess_finished(where):
    """The runner reached the end and exited normally: no case crashed the interpreter."""
    results = _results(where)
    proc = results["__proc__"]
    assert "__done__" in results and proc["rc"] == 0, f"rc={proc['rc']}\n{proc['stderr']}"


def _check(results, cid, stmt, excs, pattern):
    rec = results.get(cid)
    assert rec is not None, f"{cid}: no result (the subprocess died before it): {results['__proc__']['stderr']}"
    assert rec["exc"] is not None, f"{cid}: `{stmt}` raised nothing"
    assert rec["exc"] in excs.split("|"), (
        f"{cid}: `{stmt}` raised {rec['exc']} (in {rec.get('where')}), want {excs}: {rec['msg']}")
    assert re.search(pattern, rec["msg"]), f"{cid}: the message does not name the argument ({pattern}): {rec['msg']}"


@pytest.mark.parametrize("where", DEVICES)
@pytest.mark.parametrize("cid,stmt,excs,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input(where, cid, stmt, excs, pattern):
    _check(_results(where), cid, stmt, excs, pattern)


@pytest.mark.parametrize("where", [CUDA])
@pytest.mark.parametrize("cid,stmt,excs,pattern", TWO_DEVICE_CASES, ids=[c[0] for c in TWO_DEVICE_CASES])
def test_bad_input_two_devices(where, cid, stmt, excs, pattern):
    if CUDA_ON_CPU:
        pytest.skip("rehearsal: needs two devices (the CPU and a GPU)")
    _check(_results(where), cid, stmt, excs, pattern)
