/*
 * Stand-in for the host end of a virtio-serial port in tests: a pty pair in
 * raw mode. Prints the slave's path (the agent's --device), then copies
 * stdin to the master and the master to stdout. When stdin closes it exits,
 * and the agent sees its port hang up, as when QEMU's chardev peer goes.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <termios.h>
#include <unistd.h>

static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(void)
{
    struct termios tio;
    char buf[65536];
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0) {
        perror("pty_host: posix_openpt");
        return 1;
    }
    const char *name = ptsname(master);
    /* Raw: no echo, no line editing, no CR/LF translation. The slave stays
     * open here so that the settings hold until the agent opens it. */
    int slave = open(name, O_RDWR | O_NOCTTY);
    if (slave < 0 || tcgetattr(slave, &tio) < 0) {
        perror("pty_host: slave");
        return 1;
    }
    cfmakeraw(&tio);
    tcsetattr(slave, TCSANOW, &tio);
    printf("%s\n", name);
    fflush(stdout);
    for (;;) {
        struct pollfd p[2] = { { .fd = master, .events = POLLIN }, { .fd = 0, .events = POLLIN } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (p[0].revents & POLLIN) {
            ssize_t n = read(master, buf, sizeof(buf));
            if (n > 0 && write_all(1, buf, (size_t)n) < 0)
                return 1;
        }
        if (p[1].revents) {
            ssize_t n = read(0, buf, sizeof(buf));
            if (n <= 0)
                return 0;
            if (write_all(master, buf, (size_t)n) < 0)
                return 1;
        }
    }
}
