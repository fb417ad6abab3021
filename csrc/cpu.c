/* cpu.c - build and CPU facts: OpenMP presence and the GEMM ISA choice. */
#define FUSENN_NO_DTYPE
#include "internal.h"

#include <stdlib.h>
#include <string.h>

int fusenn_has_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fusenn_num_procs(void)
{
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

int fusenn_omp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
}

/* The best ISA level this CPU supports, lowered by FUSENN_ISA if set. */
static int detect_isa_level(void)
{
    int level = FUSENN_ISA_GENERIC;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        level = FUSENN_ISA_AVX2;
    if (level == FUSENN_ISA_AVX2 && __builtin_cpu_supports("avx512f"))
        level = FUSENN_ISA_AVX512;
#endif
    const char *forced = getenv("FUSENN_ISA");
    if (forced != NULL) {
        int want = level;
        if (strcmp(forced, "generic") == 0)
            want = FUSENN_ISA_GENERIC;
        else if (strcmp(forced, "avx2") == 0)
            want = FUSENN_ISA_AVX2;
        else if (strcmp(forced, "avx512") == 0)
            want = FUSENN_ISA_AVX512;
        if (want < level) /* never raise above what the CPU has */
            level = want;
    }
    return level;
}

int fusenn_isa_level(void)
{
    /* Computed once; a race between threads only computes the same value twice. */
    static volatile int cached = -1;
    if (cached < 0)
        cached = detect_isa_level();
    return cached;
}

const char *fusenn_gemm_isa(void)
{
    static const char *names[] = {"generic", "avx2", "avx512"};
    return names[fusenn_isa_level()];
}
