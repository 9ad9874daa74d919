/*
 * The pod sandbox ("pause") process of the local platform's real node: it holds the pod's namespaces and does
 * nothing else. Same contract as Kubernetes' own pause (written here, so nothing is pulled from a registry):
 * sleep until SIGINT/SIGTERM and then exit 0; as PID 1 of the pod's PID namespace (shareProcessNamespace) it
 * also reaps orphaned children, which would otherwise stay zombies.
 *
 * Built by mlinfra.devenv.images: gcc -Os -static, the only file of the image (no libc to load).
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "mlinfra-pause 1\n"

static void say(const char *text) {
    /* write(2): the only output call that is safe inside a signal handler. */
    ssize_t ignored = write(STDERR_FILENO, text, strlen(text));
    (void)ignored;
}

static void on_stop(int signo) {
    (void)signo;
    say("pause: stopping\n");
    _exit(0);
}

static void on_child(int signo) {
    (void)signo;
    int saved = errno; /* the interrupted code may be about to read errno */
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int handle(int signo, void (*handler)(int), int flags) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    return sigaction(signo, &action, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        say(VERSION);
        return 0;
    }
    if (getpid() != 1) {
        /* Still useful (it holds the namespaces), but no zombie reaping for the pod. */
        say("pause: warning: not PID 1\n");
    }
    /* PID 1 gets no signal it has no handler for: without these SIGTERM would be ignored, and the runtime
     * would wait for its grace period and SIGKILL every sandbox. */
    if (handle(SIGINT, on_stop, 0) < 0 || handle(SIGTERM, on_stop, 0) < 0 ||
        handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART) < 0) {
        say("pause: sigaction failed\n");
        return 1;
    }
    for (;;) {
        pause();
    }
    return 42; /* not reached */
}
