/* test_signals.c: Ctrl-C on the long-running commands. `train` writes a
 * checkpoint of the step it was in and says how to resume (the resumed run
 * goes on from that step); `chat` on a terminal resets the text attributes
 * it set (the dimmed reasoning) before it dies of the signal. Both run the
 * real binary on the embedded model (models/tiny). */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

/* Reads fd into buf (appending, NUL-terminated) until needle shows up, EOF,
 * or `seconds` pass; 1 if needle arrived. */
static int read_until(int fd, char *buf, size_t cap, size_t *len, const char *needle, double seconds) {
    double end = test_now() + seconds;
    while (test_now() < end) {
        if (needle && strstr(buf, needle)) return 1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        if (*len + 1 >= cap) *len = 0; /* keep the tail only */
        ssize_t n = read(fd, buf + *len, cap - 1 - *len);
        if (n <= 0) break;
        *len += (size_t)n;
        buf[*len] = 0;
    }
    return needle && strstr(buf, needle);
}

TEST(train_sigint_writes_checkpoint) {
    const char *bin = test_bin();
    const char *dir = test_tmpdir();
    char text[1024], ckpt[1024];
    snprintf(text, sizeof text, "%s/text.txt", dir);
    snprintf(ckpt, sizeof ckpt, "%s/run.ckpt", dir);
    FILE *f = fopen(text, "w");
    REQUIRE(f);
    for (int i = 0; i < 200; i++)
        fprintf(f, "And God said, Let there be light: and there was light. Verse %d of the test.\n", i);
    fclose(f);
    int err[2];
    REQUIRE(pipe(err) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        dup2(err[1], 2);
        close(err[0]);
        close(err[1]);
        execl(bin, bin, "train", "--init", "models/tiny", "-t", "models/tiny", "-f", text, "-o", ckpt, "--steps",
              "100000", "--batch", "1", "--ctx", "32", "--threads", "1", "--save-every", "0", (char *)NULL);
        _exit(127);
    }
    close(err[1]);
    static char log[1 << 16];
    size_t len = 0;
    log[0] = 0;
    CHECKF(read_until(err[0], log, sizeof log, &len, "step ", 120), "no step reported: %s", log);
    kill(pid, SIGINT);
    read_until(err[0], log, sizeof log, &len, NULL, 120);
    close(err[0]);
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid);
    CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 130, "status %d: %s", st, log);
    const char *at = strstr(log, "interrupted after step ");
    REQUIRE(at);
    int step = atoi(at + strlen("interrupted after step "));
    CHECK(step >= 1 && step < 100000);
    struct stat sb;
    CHECKF(stat(ckpt, &sb) == 0 && sb.st_size > 0, "no checkpoint at %s", ckpt);
    /* Resumed, it goes on with the next step. */
    char cmd[4096], *out = NULL, want[64];
    snprintf(cmd, sizeof cmd, "%s train --resume '%s' -t models/tiny -f '%s' -o '%s' --steps %d --batch 1 --ctx 32 "
             "--threads 1 2>&1", bin, ckpt, text, ckpt, step + 1);
    CHECK_EQ_INT(test_run(cmd, &out), 0);
    snprintf(want, sizeof want, "step %5d/%d", step + 1, step + 1);
    CHECKF(out && strstr(out, want), "no \"%s\" in: %s", want, out ? out : "");
    free(out);
}

TEST(chat_sigint_resets_terminal) {
    const char *bin = test_bin();
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    REQUIRE(m >= 0 && grantpt(m) == 0 && unlockpt(m) == 0);
    const char *slave = ptsname(m);
    REQUIRE(slave);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        setsid();
        int s = open(slave, O_RDWR);
        if (s < 0) _exit(127);
        dup2(s, 0);
        dup2(s, 1);
        close(s);
        close(m);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 2);
        execl(bin, bin, "chat", "-m", "models/tiny", "--think", "-t", "1", "-n", "600", (char *)NULL);
        _exit(127);
    }
    static char out[1 << 16];
    size_t len = 0;
    out[0] = 0;
    CHECKF(read_until(m, out, sizeof out, &len, "> ", 120), "no prompt: %s", out);
    REQUIRE(write(m, "Tell me\n", 8) == 8);
    /* The reasoning is dimmed: interrupt inside it. */
    CHECKF(read_until(m, out, sizeof out, &len, "\033[2m", 120), "no dimmed reasoning: %s", out);
    /* Still inside the reasoning (no reset printed yet), then Ctrl-C. */
    read_until(m, out, sizeof out, &len, NULL, 0.2);
    const char *dim0 = strstr(out, "\033[2m");
    CHECKF(dim0 && !strstr(dim0, "\033[0m"), "the reasoning ended before the interrupt: %s", out);
    kill(pid, SIGINT);
    read_until(m, out, sizeof out, &len, NULL, 30);
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid);
    close(m);
    CHECKF(WIFSIGNALED(st) && WTERMSIG(st) == SIGINT, "status %d", st);
    /* The reset comes after the dimmed text (at the earliest, right after
     * the dim code itself). */
    const char *dim = strstr(out, "\033[2m");
    CHECKF(dim && strstr(dim, "\033[0m"), "no reset after the interrupt: %s", out);
}
