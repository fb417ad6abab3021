/* interrupt.c - Ctrl-C while the engine runs without the GIL.
 *
 * Python's own SIGINT handler only records the signal; the interpreter acts on
 * it when it next runs bytecode, which a one-call epoch would postpone to the
 * epoch's end. While an interruptible call runs, this handler sets a flag the
 * engine polls between batches (no GIL needed) and passes the signal on to the
 * handler it replaced, so Python still sees it; the caller then lets Python
 * raise KeyboardInterrupt. Installed only over a handler function (never over
 * SIG_DFL or SIG_IGN), and nested calls share one installation. */
#define FUSENN_NO_DTYPE
#include "internal.h"

#if defined(__unix__) || defined(__APPLE__)
#include <signal.h>

static volatile sig_atomic_t pending;
static struct sigaction replaced;
static int depth; /* nested interruptible calls; changed with the GIL held */

static void on_sigint(int sig, siginfo_t *info, void *context)
{
    pending = 1;
    if (replaced.sa_flags & SA_SIGINFO)
        replaced.sa_sigaction(sig, info, context);
    else if (replaced.sa_handler != SIG_DFL && replaced.sa_handler != SIG_IGN)
        replaced.sa_handler(sig);
}

int fusenn_interrupt_begin(void)
{
    if (depth > 0) {
        depth++;
        return 1;
    }
    struct sigaction current;
    if (sigaction(SIGINT, NULL, &current) != 0 ||
        (!(current.sa_flags & SA_SIGINFO) &&
         (current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN)))
        return 0;
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_sigint;
    ours.sa_flags = SA_SIGINFO | (current.sa_flags & SA_ONSTACK);
    sigemptyset(&ours.sa_mask);
    pending = 0;
    replaced = current;
    if (sigaction(SIGINT, &ours, NULL) != 0)
        return 0;
    depth = 1;
    return 1;
}

void fusenn_interrupt_end(void)
{
    if (depth > 0 && --depth == 0)
        sigaction(SIGINT, &replaced, NULL);
}

int fusenn_interrupt_pending(void) { return pending; }

void fusenn_interrupt_clear(void) { pending = 0; }
#else
int fusenn_interrupt_begin(void) { return 0; }
void fusenn_interrupt_end(void) {}
int fusenn_interrupt_pending(void) { return 0; }
void fusenn_interrupt_clear(void) {}
#endif
