/* shuffle.c - seeded randomness: the permutation fit() draws each epoch's batch
 * order from, and the per-step seeds of dropout masks. Its own generator
 * (splitmix64) rather than NumPy's, so the streams are defined here once and
 * both backends train on identical batches with identical masks. */
#define FUSENN_NO_DTYPE
#include "internal.h"

/* splitmix64: a well-mixed 64-bit sequence from any seed (Steele et al. 2014). */
static uint64_t splitmix64(uint64_t *state)
{
    return fusenn_mix64(*state += FUSENN_GOLDEN_GAMMA);
}

/* Uniform integer in [0, bound), unbiased (Lemire's multiply-and-reject). */
static uint64_t bounded(uint64_t *state, uint64_t bound)
{
    __uint128_t m = (__uint128_t)splitmix64(state) * bound;
    uint64_t low = (uint64_t)m;
    if (low < bound) {
        uint64_t threshold = -bound % bound;
        while (low < threshold) {
            m = (__uint128_t)splitmix64(state) * bound;
            low = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

void fusenn_shuffle(uint64_t seed, size_t n, int64_t *order)
{
    uint64_t state = seed;
    for (size_t i = 0; i < n; i++)
        order[i] = (int64_t)i;
    for (size_t i = n; i > 1; i--) { /* Fisher-Yates */
        size_t j = (size_t)bounded(&state, i);
        int64_t tmp = order[i - 1];
        order[i - 1] = order[j];
        order[j] = tmp;
    }
}

/* The seed of one training step's dropout masks: the (step + 1)-th splitmix64
 * output from state mix64(base). */
uint64_t fusenn_dropout_seed(uint64_t base, uint64_t step)
{
    return fusenn_hash64(fusenn_mix64(base), step);
}
