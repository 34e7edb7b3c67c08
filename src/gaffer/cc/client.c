/* gaffer-cc and gaffer-ld: the per-compile client of gaffer's compiler launcher.
 *
 * Build systems start one launcher process per compile, so this program is what every compile pays for: it
 * sends its command line to the per-user daemon over a Unix socket and writes back what the daemon answers,
 * or execs the real compiler when the daemon says so or cannot be reached. A Python interpreter would cost more
 * than a whole ccache hit before doing anything; this costs a connect and two small transfers.
 *
 * Invoked as:   gaffer-cc [--] COMPILER ARGS...   a compile (kind 0)
 *               gaffer-ld [--] DRIVER ARGS...     a link (kind 1)
 *               gcc, g++, cc, c++, clang, ...     masquerade, through a symlink named like the compiler: the real
 *                                                 compiler is the next program of that name on PATH that is not
 *                                                 this program.
 * The protocol (all integers little-endian):
 *   request:  "GCC2", u32 kind, u32 umask, u32 len + cwd, u32 argc + argc x (u32 len + arg), u32 envc + envc x (u32 len + KEY=VALUE)
 *   response: "GCR1", u32 verdict (0 done, 1 run it yourself), i32 exit code, u32 len + stdout, u32 len + stderr
 * gaffer builds this file with the system C compiler (gaffer cc --install); GAFFER_PYTHON is defined then.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef GAFFER_PYTHON
#error "build with -DGAFFER_PYTHON=\"/path/to/python\" (gaffer cc --install does)"
#endif

#define MAX_REQUEST (64u << 20)   /* the daemon refuses more; so do we, and run the compiler ourselves */
#define START_WAIT_MS 2000        /* how long a client waits for a daemon it started */

extern char **environ;

static const char *prog = "gaffer-cc";

/* The real compiler and the argv it is run with: argv[0] is its path once resolved. */
struct command {
    const char *path;
    char **argv;
};

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void run_compiler(const struct command *cmd) __attribute__((noreturn));
static void run_compiler(const struct command *cmd)
{
    execv(cmd->path, cmd->argv);
    int err = errno;
    say("cannot run %s: %s", cmd->path, strerror(err));
    exit(err == ENOENT ? 127 : 126);
}

/* Run the compiler ourselves, with one line saying why the daemon could not: the build goes on uncached. */
static void fallback(const struct command *cmd, const char *why, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void fallback(const struct command *cmd, const char *why, ...)
{
    va_list ap;
    va_start(ap, why);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, why, ap);
    fprintf(stderr, "; running %s directly\n", cmd->path);
    va_end(ap);
    run_compiler(cmd);
}

/* -- finding the real compiler ------------------------------------------------------------------------------ */

static int is_self(const char *candidate, const char *self)
{
    char real[PATH_MAX];
    return self[0] != '\0' && realpath(candidate, real) != NULL && strcmp(real, self) == 0;
}

/* The first executable `name` on PATH that is not this program (a masquerade directory may come first). */
static const char *find_on_path(const char *name, const char *self, char *found, size_t size)
{
    const char *path = getenv("PATH");
    if (path == NULL || path[0] == '\0')
        path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path;; ++p) {
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *dir = len ? p : ".";
        size_t dirlen = len ? len : 1;
        if (dirlen + 1 + strlen(name) + 1 <= size) {
            memcpy(found, dir, dirlen);
            found[dirlen] = '/';
            strcpy(found + dirlen + 1, name);
            struct stat st;
            if (stat(found, &st) == 0 && S_ISREG(st.st_mode) && access(found, X_OK) == 0 && !is_self(found, self))
                return found;
        }
        if (end == NULL)
            return NULL;
        p = end;
    }
}

/* This program's real path, so that a masquerade link never runs itself: /proc/self/exe, else (no /proc) argv[0]
 * as the shell found it. Empty if neither works; then a masquerade name finds nothing and says so. */
static void own_path(const char *argv0, char *self, char *scratch)
{
    ssize_t len = readlink("/proc/self/exe", self, PATH_MAX - 1);
    if (len > 0) {
        self[len] = '\0';
        return;
    }
    self[0] = '\0';
    const char *found = strchr(argv0, '/') ? argv0 : find_on_path(argv0, self, scratch, PATH_MAX);
    if (found == NULL || realpath(found, self) == NULL)
        self[0] = '\0';
}

/* -- the daemon's directory and socket ---------------------------------------------------------------------- */

/* $GAFFER_CC_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/gaffer/cc; absolute (the daemon runs in /). */
static int cc_dir(char *out, size_t size, const char *cwd)
{
    const char *dir = getenv("GAFFER_CC_DIR");
    int n;
    if (dir != NULL && dir[0] != '\0') {
        n = dir[0] == '/' ? snprintf(out, size, "%s", dir) : snprintf(out, size, "%s/%s", cwd, dir);
    } else {
        const char *xdg = getenv("XDG_CACHE_HOME");
        const char *home = getenv("HOME");
        if (xdg != NULL && xdg[0] != '\0')
            n = snprintf(out, size, "%s/gaffer/cc", xdg);
        else if (home != NULL && home[0] != '\0')
            n = snprintf(out, size, "%s/.cache/gaffer/cc", home);
        else
            return -1;
    }
    return n > 0 && (size_t)n < size ? 0 : -1;
}

static int try_connect(const struct sockaddr_un *addr)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0)
        return fd;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

static void close_from(int lowest)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lowest, ~0u, 0u) == 0)
        return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (int fd = lowest; fd < max; ++fd)
        close(fd);
}

/* mkdir -p, each directory made 0700: the launcher's directory (and ~/.cache on a new account). */
static int make_dirs(const char *dir)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return -1;
    for (char *p = path + 1;; ++p) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(path, 0700) != 0 && errno != EEXIST)
                return -1;
            if (c == '\0')
                return 0;
            *p = c;
        }
    }
}

/* Start `python -m gaffer cc --daemon` detached: its own session and process group (a build step's group is
 * killed when the step ends), no inherited descriptors (a build tool waits for its pipes to close), cwd /, and
 * without GAFFER_TASK_RUN (gaffer kills what a finished task left behind that carries it). Its stderr goes to
 * daemon.log, so even a failed start says why there.
 * Returns the read end of a pipe whose write end only the daemon holds (as its descriptor 3, for its whole life):
 * it reads end-of-file once the daemon is gone, so a daemon that cannot start (a bad setting, a full disk) costs
 * a waiting client nothing. -1 if the start failed, -2 if it started without the pipe. */
static int start_daemon(const char *dir)
{
    char log[PATH_MAX];
    if (snprintf(log, sizeof log, "%s/daemon.log", dir) >= (int)sizeof log)
        return -1;
    int gone[2];
    if (pipe2(gone, O_CLOEXEC) != 0)
        gone[0] = gone[1] = -1;
    pid_t child = fork();
    if (child < 0) {
        if (gone[0] >= 0) {
            close(gone[0]);
            close(gone[1]);
        }
        return -1;
    }
    if (child == 0) {
        if (setsid() < 0)
            _exit(1);
        pid_t grandchild = fork();
        if (grandchild != 0)
            _exit(grandchild < 0);
        int keep = gone[1] >= 0 ? fcntl(gone[1], F_DUPFD, 10) : -1; /* out of the way of 0-3 */
        int null = open("/dev/null", O_RDWR);
        int err = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(err >= 0 ? err : null, 2) < 0)
            _exit(1);
        if (keep >= 0 && dup2(keep, 3) != 3) /* a dup2 to another number is inherited across exec */
            _exit(1);
        close_from(keep >= 0 ? 4 : 3);
        if (chdir("/") != 0)
            _exit(1);
        unsetenv("GAFFER_TASK_RUN");
        if (setenv("GAFFER_CC_DIR", dir, 1) != 0) /* where this client looks, whatever its cwd was */
            _exit(1);
        char *args[] = {GAFFER_PYTHON, "-m", "gaffer", "cc", "--daemon", NULL};
        execv(args[0], args);
        _exit(127);
    }
    if (gone[1] >= 0)
        close(gone[1]);
    int status, waited;
    while ((waited = waitpid(child, &status, 0)) < 0 && errno == EINTR)
        ;
    if (waited < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (gone[0] >= 0)
            close(gone[0]);
        return -1;
    }
    return gone[0] >= 0 ? gone[0] : -2;
}

/* A connection to the daemon, starting it if nobody listens; -1 (errno set) when there is none after waiting. */
/* Only one of the clients that find no daemon starts one: the first compiles of `make -j64` would otherwise start
 * 64 Pythons, 63 of them only to find the lock taken, and slow the one that matters. The others wait for it,
 * and stop waiting when it lets the lock go (its daemon listens, or exited).
 * Returns the lock file's descriptor (-1: none); *held is set when this client took the lock and so starts one. */
static int open_spawn_lock(const char *dir, int *held)
{
    char path[PATH_MAX];
    *held = 0;
    if (snprintf(path, sizeof path, "%s/spawn.lock", dir) >= (int)sizeof path)
        return -1;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0)
        *held = flock(fd, LOCK_EX | LOCK_NB) == 0;
    return fd;
}

/* Has the client starting the daemon let the spawn lock go? */
static int spawn_done(int fd)
{
    if (flock(fd, LOCK_SH | LOCK_NB) != 0)
        return 0;
    flock(fd, LOCK_UN); /* at once: a client that comes next must be able to start one */
    return 1;
}

static int connect_daemon(const char *dir, const struct sockaddr_un *addr)
{
    int fd = try_connect(addr);
    if (fd >= 0 || (errno != ENOENT && errno != ECONNREFUSED))
        return fd;
    if (make_dirs(dir) != 0)
        return -1;
    int held;
    int spawn = open_spawn_lock(dir, &held);
    int starts = spawn < 0 || held; /* no lock to share: start one anyway, the daemon's own lock keeps it single */
    int gone = starts ? start_daemon(dir) : -2;
    if (gone == -1) {
        if (spawn >= 0)
            close(spawn);
        return -1;
    }
    long waited_us = 0, step_us = 500;
    fd = -1;
    errno = ETIMEDOUT;
    while (waited_us < START_WAIT_MS * 1000L) {
        struct timespec ts = {0, step_us * 1000L};
        struct pollfd exited = {.fd = gone, .events = POLLIN};
        int ended = gone >= 0 ? ppoll(&exited, 1, &ts, NULL) > 0
                              : (nanosleep(&ts, NULL), !starts && spawn_done(spawn));
        waited_us += step_us;
        if (step_us < 50000)
            step_us *= 2;
        fd = try_connect(addr);
        if (fd >= 0 || (errno != ENOENT && errno != ECONNREFUSED))
            break;
        errno = ended ? ECHILD : ETIMEDOUT; /* the daemon started is gone: its reason is in daemon.log */
        if (ended)
            break;
    }
    int saved = errno;
    if (gone >= 0)
        close(gone);
    if (spawn >= 0)
        close(spawn);
    errno = saved;
    return fd;
}

/* -- framing ------------------------------------------------------------------------------------------------ */

static unsigned char *put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
    return p + 4;
}

static unsigned char *put_bytes(unsigned char *p, const char *s, size_t len)
{
    p = put_u32(p, (uint32_t)len);
    memcpy(p, s, len);
    return p + len;
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Add `n` to a running request size; 0 once it passes MAX_REQUEST. */
static size_t grow(size_t total, size_t n)
{
    return total == 0 || n > MAX_REQUEST || total + n > MAX_REQUEST ? 0 : total + n;
}

/* The whole request in one buffer (one allocation, its size computed first); NULL if too big or out of memory. */
static unsigned char *encode(uint32_t kind, const char *cwd, char **argv, size_t *size)
{
    size_t total = 4 + 4 + 4 + 4 + strlen(cwd) + 4 + 4;
    size_t argc = 0, envc = 0;
    for (; argv[argc] != NULL; ++argc)
        total = grow(total, 4 + strlen(argv[argc]));
    for (; environ[envc] != NULL; ++envc)
        total = grow(total, 4 + strlen(environ[envc]));
    if (total == 0 || total > MAX_REQUEST)
        return NULL;
    unsigned char *buf = malloc(total), *p = buf;
    if (buf == NULL)
        return NULL;
    mode_t mask = umask(0); /* the daemon creates the compile's files with ours, as the compiler would */
    umask(mask);
    memcpy(p, "GCC2", 4);
    p = put_u32(p + 4, kind);
    p = put_u32(p, (uint32_t)mask);
    p = put_bytes(p, cwd, strlen(cwd));
    p = put_u32(p, (uint32_t)argc);
    for (size_t i = 0; i < argc; ++i)
        p = put_bytes(p, argv[i], strlen(argv[i]));
    p = put_u32(p, (uint32_t)envc);
    for (size_t i = 0; i < envc; ++i)
        p = put_bytes(p, environ[i], strlen(environ[i]));
    *size = (size_t)(p - buf);
    return buf;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = fd == 1 || fd == 2 ? write(fd, p, n) : send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Copy `n` bytes of the response to `out`; -1 if the daemon's side failed (the output may be cut). */
static int relay(int sock, uint32_t n, int out, int *out_ok)
{
    unsigned char buf[65536];
    while (n > 0) {
        size_t chunk = n < sizeof buf ? n : sizeof buf;
        if (read_all(sock, buf, chunk) != 0)
            return -1;
        if (*out_ok && write_all(out, buf, chunk) != 0)
            *out_ok = 0; /* a closed stdout is the reader's choice: keep reading, report it in the status */
        n -= (uint32_t)chunk;
    }
    return 0;
}

static void exit_like(int32_t code) __attribute__((noreturn));
static void exit_like(int32_t code)
{
    if (code >= 0)
        exit(code > 255 ? 255 : code);
    if (-code < NSIG) { /* the compiler died of a signal: so do we, as a plain run would have */
        signal(-code, SIG_DFL);
        raise(-code);
    }
    exit(128 + (-code & 127));
}

/* -- main --------------------------------------------------------------------------------------------------- */

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

int main(int argc, char **argv)
{
    const char *name = base_name(argv[0] ? argv[0] : "gaffer-cc");
    uint32_t kind = 0;
    char **cmd_argv;
    const char *compiler;
    if (strcmp(name, "gaffer-cc") == 0 || strcmp(name, "gaffer-ld") == 0) {
        prog = strcmp(name, "gaffer-ld") == 0 ? "gaffer-ld" : "gaffer-cc";
        kind = strcmp(prog, "gaffer-ld") == 0; /* 1: a link */
        int first = argc > 1 && strcmp(argv[1], "--") == 0 ? 2 : 1;
        if (first >= argc) {
            fprintf(stderr, "usage: %s [--] %s ARGS...\n", prog, kind ? "DRIVER" : "COMPILER");
            return 2;
        }
        cmd_argv = argv + first;
        compiler = cmd_argv[0];
    } else {
        cmd_argv = argv; /* masquerade: we are "gcc"; the real one is further along PATH */
        compiler = name;
    }

    char self[PATH_MAX], found[PATH_MAX];
    own_path(argv[0] ? argv[0] : "", self, found);
    struct command cmd = {compiler, cmd_argv};
    if (cmd_argv == argv && self[0] == '\0') {
        say("%s: cannot tell which %s on PATH is gaffer-cc itself (no /proc/self/exe)", compiler, compiler);
        return 127;
    }
    if (strchr(compiler, '/') == NULL) {
        cmd.path = find_on_path(compiler, self, found, sizeof found);
        if (cmd.path == NULL) {
            say("%s: not found on PATH%s", compiler, cmd_argv == argv ? " (other than gaffer-cc itself)" : "");
            return 127;
        }
    } else if (is_self(compiler, self)) {
        say("%s is gaffer-cc itself; name the real compiler", compiler);
        return 2;
    }
    cmd_argv[0] = (char *)cmd.path; /* the daemon and a direct run both get the resolved compiler */

    char dir[PATH_MAX], cwd[PATH_MAX];
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (getcwd(cwd, sizeof cwd) == NULL)
        fallback(&cmd, "cannot read the working directory: %s", strerror(errno));
    if (cc_dir(dir, sizeof dir, cwd) != 0)
        fallback(&cmd, "no daemon directory (set GAFFER_CC_DIR or HOME)");
    if (snprintf(addr.sun_path, sizeof addr.sun_path, "%s/daemon.sock", dir) >= (int)sizeof addr.sun_path)
        fallback(&cmd, "the socket path under %s is too long for a Unix socket", dir);
    struct stat st;
    if (stat(dir, &st) == 0 && st.st_uid != getuid())
        fallback(&cmd, "%s belongs to another user", dir);

    size_t size = 0;
    unsigned char *request = encode(kind, cwd, cmd_argv, &size);
    if (request == NULL)
        fallback(&cmd, "the command line is too long for the daemon");
    int sock = connect_daemon(dir, &addr);
    if (sock < 0)
        fallback(&cmd, "the daemon is not reachable (%s; see %s/daemon.log)",
                 errno == ECHILD ? "it exited at start" : strerror(errno), dir);
    if (write_all(sock, request, size) != 0)
        fallback(&cmd, "the daemon closed the connection");
    free(request);

    unsigned char head[16];
    if (read_all(sock, head, sizeof head) != 0 || memcmp(head, "GCR1", 4) != 0)
        fallback(&cmd, "no answer from the daemon");
    uint32_t verdict = get_u32(head + 4);
    int32_t code = (int32_t)get_u32(head + 8);
    if (verdict == 1) {
        close(sock);
        run_compiler(&cmd);
    }
    if (verdict != 0)
        fallback(&cmd, "the daemon answered an unknown verdict");
    int out_ok = 1, err_ok = 1;
    unsigned char lenbuf[4];
    if (relay(sock, get_u32(head + 12), 1, &out_ok) != 0 || read_all(sock, lenbuf, 4) != 0 ||
        relay(sock, get_u32(lenbuf), 2, &err_ok) != 0) {
        say("the daemon's answer was cut short (see %s/daemon.log)", dir);
        return 1;
    }
    close(sock);
    if (!out_ok && code == 0)
        return 1;
    exit_like(code);
}
