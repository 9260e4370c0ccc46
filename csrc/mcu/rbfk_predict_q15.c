/*
 * rbfk_predict_q15.c - rbfk_net_predict_class_q15: argmax of the fixed-point network outputs.
 */
#include "rbfk_internal.h"

rbfk_status rbfk_net_predict_class_q15(const rbfk_net_q15 *net, const int16_t *x, int16_t *scratch, int16_t *y,
                                       int32_t *cls)
{
    rbfk_status st;
    int32_t k, best = 0;

    if (cls == NULL) {
        return RBFK_ERR_NULL;
    }
    st = rbfk_net_forward_q15(net, x, scratch, y);
    if (st != RBFK_OK) {
        return st;
    }
    for (k = 1; k < net->out_dim; ++k) {
        if (y[k] > y[best]) {
            best = k;
        }
    }
    *cls = best;
    return RBFK_OK;
}
