/* activation_info.c - dtype-independent facts about the activations. */
#define FUSENN_NO_DTYPE
#include "internal.h"

int fusenn_activation_needs_z(fusenn_activation act)
{
    return fusenn_act_needs_z(act);
}
