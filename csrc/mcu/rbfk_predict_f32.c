/*
 * rbfk_predict_f32.c - rbfk_net_predict_class_f32: argmax of the float network outputs.
 */
#include "rbfk_internal.h"

rbfk_status rbfk_net_predict_class_f32(const rbfk_net_f32 *net, const float *x, float *scratch, float *y,
                                       int32_t *cls)
{
    rbfk_status st;
    int32_t k, best = 0;

    if (cls == NULL) {
        return RBFK_ERR_NULL;
    }
    st = rbfk_net_forward_f32(net, x, scratch, y);
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
