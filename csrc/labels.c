/* labels.c - the class-label check, shared by the model's validation (through
 * the binding) and the training engine's check of a batch. */
#define FUSENN_NO_DTYPE
#include "internal.h"

size_t fusenn_first_label_out_of_range(size_t n, const int64_t *labels, int64_t k)
{
    for (size_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= k)
            return i;
    return n;
}
