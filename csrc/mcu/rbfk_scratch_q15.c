/*
 * rbfk_scratch_q15.c - rbfk_net_scratch_size_q15: int16 scratch elements rbfk_net_forward_q15 needs
 * (the C hidden activations).
 */
#include "rbfk_internal.h"

size_t rbfk_net_scratch_size_q15(const rbfk_net_q15 *net)
{
    return rbfk__check_q15(net, 0) == RBFK_OK ? (size_t)net->n_centers : 0;
}
