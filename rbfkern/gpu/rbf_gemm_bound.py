"""The per-pair certificate of the Triton GEMM-form RBF forward (``rbf_gemm.py``).

The forward computes, on shifted operands x' = fl(x - mu), c' = fl(c - mu) (mu: the centres' mean),
    r2^ = fl(fl(S^ + X^) + C^_j),   S^ = x' . B_j on the tensor cores (3xTF32), B_j = -2 fl(w_j c'_j),
X^ = sum_d w x'^2 (shared metric: fp32 CUDA-core sums; per-centre w_j: a second 3xTF32 GEMM of
fl(x'^2) with w_j) and C^_j = sum_d w_j c'^2 (float64, rounded). A pair is accepted when
    alpha r2^ >= xi X^ + zeta C^_j + theta_n + theta_j     (and r2^ is finite),
which implies |r2^ - r2| <= tau r2^ for the exact r2 of the stored inputs; the rest are recomputed
in the difference form. Derivation (first order in u = 2^-24; X', C' the exact weighted norms of the
computed x', c'):
  shift x' = fl(x - mu), c' likewise:     u (r2 + 2 X' + 2 C')       (|x'-c' - (x-c)| <= u(|x'|+|c'|))
  panel fl(w c') (the -2 is exact):        u (X' + C')                (2 |w x' c'| <= w x'^2 + w c'^2)
  cross GEMM, 3xTF32:                      g_c (1 + u) (X' + C')      (g: mma_chain_factor, below)
  X^  shared: (D + 2) u X';  per-centre:   (g_x + u) X'
  C^_j, a float64 sum rounded once:        (u + (D + 3) u64) C'
  t = fl(S^ + X^), r2^ = fl(t + C^):       u |t| <= u (2 X' + C'),  u r2^
so E = |r2^ - r2| <= u r2 + u r2^ + (g_c + gam_X + 5u) X' + (g_c + gam_C + 4u) C' + E_abs; with
r2 <= r2^ + E, X' <= X^ / (1 - gam_X), C' <= C^ / (1 - gam_C) the test above gives E <= tau r2^. The
5 % slack on xi, zeta covers the test's own float32 roundings and the second-order terms; one more
u r2 in alpha covers a flushed shift (see ABS_L1).

Absolute errors (E_abs; flush-to-zero of subnormals in the tensor cores or elsewhere): every flushed
operand of an MMA loses at most OMEGA times its partner, every flushed product, accumulation or
float32 op at most OMEGA. theta_n = ABS_L1 * (|x'|_1 [+ |x'^2|_1]) per row (in the GEMM kernel),
theta_j = ABS_L1 * (|B_j|_1 [+ |w_j|_1]) + abs_const per centre. A flushed shifted value adds
<= 4 OMEGA^2 sum(w) / u + u r2 to r2 (AM-GM), far below abs_const.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# ---- the one place that states what the tensor cores are assumed to do (an assumption until a
# device run measures the GEMM form's worst error against it) -------------------------------------
# Products one tf32 MMA instruction adds into its accumulator (mma.sync m16n8k8, wgmma m64nNk8).
MMA_K = 8
# Error unit of the MMA unit's float32 accumulation, charged once per product and once per
# instruction (relative to the sum of |terms| so far). Hopper's accumulation is not documented as
# IEEE round-to-nearest (measurements on earlier parts show truncation and alignment to the largest
# exponent, a few ulps per instruction); 2^-20 is 8 float32 ulps at the top bit, per instruction.
MMA_UNIT = 2.0 ** -20
# 3xTF32: a = a_hi + a_lo, a_hi = rna_tf32(a) (|a_lo| <= 2^-11 |a|), the MMA reads a_lo truncated
# to tf32 (relative 2^-10 of a_lo), and a_lo b_lo is dropped: per product
# |a b - (a_hi b_hi + a_hi b_lo' + a_lo' b_hi)| <= (2 (1 + 2^-11) 2^-21 + 2^-22) |a b|.
TF32X3_SPLIT = 2 * (1 + 2.0 ** -11) * 2.0 ** -21 + 2.0 ** -22
# Smallest normal float32: the most a flushed subnormal can lose.
OMEGA = 2.0 ** -126
# -------------------------------------------------------------------------------------------------

U32 = 2.0 ** -24
U64 = 2.0 ** -53
ABS_L1 = 1.1 * 2.02 * OMEGA  # per unit of |operand|_1 (its partner flushed), with 10 % slack


def mma_chain_factor(K: int, BK: int) -> float:
    """g with |S^ - S| <= g sum_k |a_k b_k| for a 3xTF32 tl.dot chain over K (padded to BK chunks):
    the split error and one MMA_UNIT per product, plus MMA_UNIT per instruction of the one
    accumulator chain all three passes share (3 per MMA_K products; whether Triton adds each
    chunk's passes into the running accumulator or into a fresh one first, the chain is no longer)."""
    k_pad = math.ceil(K / BK) * BK
    steps = 3 * math.ceil(k_pad / MMA_K)
    # terms of the chain: |a_hi b_hi| + |a_hi b_lo'| + |a_lo' b_hi| <= (1 + 2^-9) |a b|
    return TF32X3_SPLIT + MMA_UNIT + steps * MMA_UNIT * (1 + 2.0 ** -9)


@dataclass(frozen=True)
class GemmBound:
    tau: float      # promised relative bound |r2^ - r2| <= tau r2^ of every accepted pair
    alpha: float
    xi: float
    zeta: float
    abs_const: float  # per-centre absolute part of theta_j, besides ABS_L1 |B_j|_1


def diff_form_tau(D: int) -> float:
    """The difference form's own worst-case relative bound (D + 3) u, as the C++ kernels state it
    (csrc/cpu/rbf_fwd_gemm.h), with its floor max(128, 2 (D + 3)) u."""
    return max(128.0, 2.0 * (D + 3)) * U32


def gemm_bound(D: int, BK: int, per_centre: bool) -> GemmBound:
    """Constants of the acceptance test for D features in BK chunks. tau is the smallest value
    (not below the difference form's diff_form_tau) at which xi + zeta <= 3/4 alpha, so that
    well-separated pairs (r2 >= 3/4 (X + C) roughly) pass and only pairs near a centre, relative
    to their distance from mu, are recomputed."""
    u = U32
    g_c = mma_chain_factor(D, BK) * (1 + u)
    gam_x = mma_chain_factor(D, BK) + u if per_centre else (D + 2) * u / (1 - (D + 2) * u)
    gam_c = u + (D + 3) * U64
    xi = 1.05 * (g_c + gam_x + 5 * u) / (1 - gam_x)
    zeta = 1.05 * (g_c + gam_c + 4 * u) / (1 - gam_c)
    tau = max(diff_form_tau(D), ((xi + zeta) / 0.75 + 3.01 * u) / (1 - u))
    alpha = (1 - u) * tau - 3.01 * u
    k_pad = math.ceil(D / BK) * BK
    n_chains = 2 if per_centre else 1
    abs_const = 1.1 * OMEGA * (6 * k_pad * n_chains + 3 * D + 8)
    return GemmBound(tau=tau, alpha=alpha, xi=xi, zeta=zeta, abs_const=abs_const)
