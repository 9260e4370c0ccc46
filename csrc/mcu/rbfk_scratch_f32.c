/*
 * rbfk_scratch_f32.c - rbfk_net_scratch_size_f32: floats of scratch rbfk_net_forward_f32 needs.
 * D for the standardised input (only with in_mean/in_scale) + D for x - c_j (only FULL metrics).
 */
#include "rbfk_internal.h"

size_t rbfk_net_scratch_size_f32(const rbfk_net_f32 *net)
{
    size_t n = 0;
    if (rbfk__check_f32(net, 0) != RBFK_OK) {
        return 0;
    }
    if (net->in_mean != NULL) {
        n += (size_t)net->in_dim;
    }
    if (net->metric == RBFK_METRIC_FULL || net->metric == RBFK_METRIC_SHARED_FULL) {
        n += (size_t)net->in_dim;
    }
    return n;
}
