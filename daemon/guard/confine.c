/* hpc-confine: runs an agent's command in a view of the file system in
 * which everything outside the allowed directories is read-only and the
 * daemon's own state is not there, as bubblewrap does, without privileges:
 *
 *   hpc-confine [--rw PATH]... [--hide DIR]... [--show PATH]...
 *               [--landlock-fd N] [--probe] -- PROGRAM [ARGS...]
 *
 *   --rw PATH       stays writable (an allowed directory, the commands' TMPDIR)
 *   --hide DIR      an empty read-only tmpfs over it (the daemon's state)
 *   --show PATH     a path inside a hidden directory shown again, read-only
 *   --landlock-fd N after the mounts, restrict itself with this Landlock
 *                   ruleset (mounts are refused once Landlock applies)
 *   --no-namespace  no namespace and no mounts (Landlock and --subreaper only)
 *   --subreaper     stay outside as the job's reaper (see reap() below)
 *   --probe         set everything up, then exit 0 instead of running PROGRAM
 *
 * It makes a user namespace (mapping the caller's own uid and gid) and a
 * mount namespace; binds the writable paths onto themselves; mounts the
 * hidden directories over; remounts every other mount read-only (a
 * read-only mount refuses content writes and also chmod, chown, utimes and
 * extended attributes, which Landlock does not cover); empties the
 * capability bounding set so the program, even as uid 0, cannot remount;
 * then runs the program. Mounts under /proc, /sys and /dev are left as they
 * are (device nodes such as /dev/null and terminals stay usable).
 * Exit status 126 and a message on stderr when any step fails: it never
 * runs the program less confined than asked. Static, like the release's
 * launcher, so it loads nothing. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#define MAX_PATHS 64

#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif

struct path_arg {
    const char* path;
    int fd; /* O_PATH, opened in the new mount namespace before hiding */
    int dir;
};

static struct path_arg rw[MAX_PATHS], shown[MAX_PATHS];
static const char* hidden[MAX_PATHS];
static int nrw, nshown, nhidden;

static void die(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("hpc-confine: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(126);
}

static int under(const char* path, const char* dir) {
    size_t n = strlen(dir);
    if (n == 1 && dir[0] == '/') return 1;
    return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static void write_file(const char* file, const char* text) {
    int fd = open(file, O_WRONLY | O_CLOEXEC);
    if (fd < 0) die("cannot open %s: %s", file, strerror(errno));
    ssize_t n = write(fd, text, strlen(text));
    if (n != (ssize_t)strlen(text)) die("cannot write %s: %s", file, strerror(errno));
    close(fd);
}

/* mkdir -p for a mount point inside a hidden tmpfs; a file for a file. */
static void make_mount_point(const char* path, int dir) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) die("path too long: %s", path);
    for (char* p = buf + 1; *p; ++p) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) die("cannot make %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (dir) {
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) die("cannot make %s: %s", buf, strerror(errno));
    } else {
        int fd = open(buf, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) die("cannot make %s: %s", buf, strerror(errno));
        close(fd);
    }
}

static void bind_from_fd(const struct path_arg* a) {
    char source[64];
    snprintf(source, sizeof source, "/proc/self/fd/%d", a->fd);
    if (mount(source, a->path, NULL, MS_BIND | MS_REC, NULL) != 0)
        die("cannot bind %s: %s", a->path, strerror(errno));
}

static int is_hidden_parent(const char* path) {
    for (int i = 0; i < nhidden; ++i)
        if (under(path, hidden[i])) return 1;
    return 0;
}

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape(char* s) {
    char* out = s;
    for (char* in = s; *in; ++in) {
        if (in[0] == '\\' && in[1] >= '0' && in[1] <= '7' && in[2] >= '0' && in[2] <= '7' && in[3] >= '0' &&
            in[3] <= '7') {
            *out++ = (char)((in[1] - '0') * 64 + (in[2] - '0') * 8 + (in[3] - '0'));
            in += 3;
        } else {
            *out++ = *in;
        }
    }
    *out = '\0';
}

static int has_option(const char* options, const char* name) {
    size_t n = strlen(name);
    for (const char* p = options; p && *p;) {
        if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == '\0')) return 1;
        p = strchr(p, ',');
        if (p) ++p;
    }
    return 0;
}

/* Every mount but the writable ones and /proc, /sys, /dev: read-only, its
 * other flags kept (a user namespace may not clear nosuid, nodev, noexec or
 * the atime flags of a mount it did not make). */
static void remount_read_only(void) {
    FILE* f = fopen("/proc/self/mountinfo", "re");
    if (!f) die("cannot read /proc/self/mountinfo: %s", strerror(errno));
    char* line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        /* ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... */
        char* fields[6];
        char* save = NULL;
        int n = 0;
        for (char* tok = strtok_r(line, " ", &save); tok && n < 6; tok = strtok_r(NULL, " ", &save)) fields[n++] = tok;
        if (n < 6) continue;
        char* point = fields[4];
        const char* options = fields[5];
        unescape(point);
        if (under(point, "/proc") || under(point, "/sys") || under(point, "/dev")) continue;
        int writable = 0;
        for (int i = 0; i < nrw; ++i)
            if (under(point, rw[i].path)) writable = 1;
        if (writable || has_option(options, "ro")) continue;
        unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY;
        if (has_option(options, "nosuid")) flags |= MS_NOSUID;
        if (has_option(options, "nodev")) flags |= MS_NODEV;
        if (has_option(options, "noexec")) flags |= MS_NOEXEC;
        if (has_option(options, "noatime")) flags |= MS_NOATIME;
        if (has_option(options, "nodiratime")) flags |= MS_NODIRATIME;
        if (has_option(options, "relatime")) flags |= MS_RELATIME;
        if (has_option(options, "strictatime")) flags |= MS_STRICTATIME;
        if (mount(NULL, point, NULL, flags, NULL) != 0) {
            /* A mount point we cannot reach (permission on a parent, or
             * shadowed by another mount) cannot be written through either. */
            if (errno == EACCES || errno == ENOENT) continue;
            die("cannot make %s read-only: %s", point, strerror(errno));
        }
    }
    free(line);
    fclose(f);
}

static void drop_capabilities(void) {
    for (int cap = 0; cap <= 63; ++cap)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
            die("cannot drop capability %d: %s", cap, strerror(errno));
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) != 0) die("cannot clear capabilities: %s", strerror(errno));
}

static void open_path(struct path_arg* a) {
    a->fd = open(a->path, O_PATH | O_CLOEXEC);
    if (a->fd < 0) die("cannot open %s: %s", a->path, strerror(errno));
    struct stat st;
    if (fstat(a->fd, &st) != 0) die("cannot stat %s: %s", a->path, strerror(errno));
    a->dir = S_ISDIR(st.st_mode);
}

/* Makes the namespace and its mounts (see the top of this file). */
static void confine_mounts(void) {
    /* The working directory is on the mounts as they were: entered again by
     * its path once the new ones are in place. */
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) die("cannot read the working directory: %s", strerror(errno));
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) die("cannot make a user and mount namespace: %s", strerror(errno));
    char map[64];
    write_file("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "%u %u 1\n", (unsigned)uid, (unsigned)uid);
    write_file("/proc/self/uid_map", map);
    snprintf(map, sizeof map, "%u %u 1\n", (unsigned)gid, (unsigned)gid);
    write_file("/proc/self/gid_map", map);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die("cannot make / private: %s", strerror(errno));
    /* Opened in the new namespace before anything is hidden: a path under a
     * hidden directory is bound from its descriptor once the tmpfs covers it. */
    for (int k = 0; k < nrw; ++k) open_path(&rw[k]);
    for (int k = 0; k < nshown; ++k) open_path(&shown[k]);

    /* Writable paths outside hidden directories: their own mounts, which the
     * read-only pass skips. */
    for (int k = 0; k < nrw; ++k)
        if (!is_hidden_parent(rw[k].path)) bind_from_fd(&rw[k]);
    for (int k = 0; k < nhidden; ++k)
        if (mount("tmpfs", hidden[k], "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700,size=64k") != 0)
            die("cannot hide %s: %s", hidden[k], strerror(errno));
    /* Paths inside hidden directories, shown again. */
    for (int k = 0; k < nrw; ++k)
        if (is_hidden_parent(rw[k].path)) {
            make_mount_point(rw[k].path, rw[k].dir);
            bind_from_fd(&rw[k]);
        }
    for (int k = 0; k < nshown; ++k)
        if (is_hidden_parent(shown[k].path)) {
            make_mount_point(shown[k].path, shown[k].dir);
            bind_from_fd(&shown[k]);
        }
    for (int k = 0; k < nrw; ++k) close(rw[k].fd);
    for (int k = 0; k < nshown; ++k) close(shown[k].fd);

    remount_read_only();
    if (chdir(cwd) != 0) die("cannot enter %s: %s", cwd, strerror(errno));
    drop_capabilities();
}

/* --subreaper: the process the daemon follows stays outside the namespace,
 * adopts every orphan of the job (setsid, double fork), and when the job's
 * main process ends, for whatever reason (done, or cancelled: the daemon
 * signals the job's process group), ends everything left: SIGTERM, then
 * SIGKILL after a grace period. It exits as the main process did. */
static pid_t main_child;

static void descendants_signal(pid_t root, int sig) {
    /* Repeated passes: a process may fork while we look. */
    for (int pass = 0; pass < 3; ++pass) {
        DIR* proc = opendir("/proc");
        if (!proc) return;
        struct dirent* e;
        while ((e = readdir(proc))) {
            pid_t pid = (pid_t)atoi(e->d_name);
            if (pid <= 0 || pid == root) continue;
            /* Walk up the parents; a descendant reaches root. */
            for (pid_t p = pid, hops = 0; p > 1 && hops < 64; ++hops) {
                char path[64], buf[512];
                snprintf(path, sizeof path, "/proc/%d/stat", (int)p);
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd < 0) break;
                ssize_t n = read(fd, buf, sizeof buf - 1);
                close(fd);
                if (n <= 0) break;
                buf[n] = '\0';
                char* close_paren = strrchr(buf, ')');
                int ppid = 0;
                if (!close_paren || sscanf(close_paren + 2, "%*c %d", &ppid) != 1) break;
                if (ppid == root) {
                    kill(pid, sig);
                    break;
                }
                p = (pid_t)ppid;
            }
        }
        closedir(proc);
    }
}

static volatile sig_atomic_t grace_over;

static void on_alarm(int sig) {
    (void)sig;
    grace_over = 1;
}

static int reap(void) {
    int status = 0, main_status = -1;
    for (;;) {
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0 && errno == EINTR) {
            if (grace_over) { /* the grace period is over; again each second until all are gone */
                grace_over = 0;
                descendants_signal(getpid(), SIGKILL);
                alarm(1);
            }
            continue;
        }
        if (pid < 0) break; /* ECHILD: nothing left */
        if (pid != main_child) continue;
        main_status = status;
        /* The job is over: end whatever it left behind, with 3 s to go
         * (less than the daemon's 10 s before its SIGKILL of the group). */
        descendants_signal(getpid(), SIGTERM);
        descendants_signal(getpid(), SIGCONT);
        alarm(3);
    }
    if (main_status < 0) return 126;
    if (WIFSIGNALED(main_status)) {
        signal(WTERMSIG(main_status), SIG_DFL);
        kill(getpid(), WTERMSIG(main_status));
        return 128 + WTERMSIG(main_status);
    }
    return WEXITSTATUS(main_status);
}

int main(int argc, char** argv) {
    int landlock = -1, probe = 0, subreaper = 0, mounts = 1, i = 1;
    for (; i < argc; ++i) {
        const char* a = argv[i];
        int more = i + 1 < argc;
        if (strcmp(a, "--") == 0) {
            ++i;
            break;
        } else if (strcmp(a, "--probe") == 0) {
            probe = 1;
        } else if (strcmp(a, "--subreaper") == 0) {
            subreaper = 1;
        } else if (strcmp(a, "--no-namespace") == 0) {
            mounts = 0;
        } else if (more && strcmp(a, "--rw") == 0 && nrw < MAX_PATHS) {
            rw[nrw++].path = argv[++i];
        } else if (more && strcmp(a, "--show") == 0 && nshown < MAX_PATHS) {
            shown[nshown++].path = argv[++i];
        } else if (more && strcmp(a, "--hide") == 0 && nhidden < MAX_PATHS) {
            hidden[nhidden++] = argv[++i];
        } else if (more && strcmp(a, "--landlock-fd") == 0) {
            landlock = atoi(argv[++i]);
        } else {
            die("bad argument %s (usage: hpc-confine [--rw P]... [--hide D]... [--show P]... [--landlock-fd N] "
                "[--no-namespace] [--subreaper] [--probe] -- PROGRAM [ARGS...])", a);
        }
    }
    if (!probe && i >= argc) die("no program to run");
    for (int k = 0; k < nrw; ++k)
        if (rw[k].path[0] != '/') die("%s is not an absolute path", rw[k].path);
    for (int k = 0; k < nshown; ++k)
        if (shown[k].path[0] != '/') die("%s is not an absolute path", shown[k].path);

    if (subreaper && !probe) {
        if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) die("cannot become a subreaper: %s", strerror(errno));
        /* The daemon's cancel signals the whole process group: the main
         * process takes it; this one outlives it to clean up. */
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        signal(SIGALRM, on_alarm);
        main_child = fork();
        if (main_child < 0) die("cannot fork: %s", strerror(errno));
        if (main_child > 0) {
            if (landlock >= 0) close(landlock);
            return reap();
        }
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGALRM, SIG_DFL);
    }
    if (mounts) confine_mounts();
    if (landlock >= 0) {
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("cannot set no_new_privs: %s", strerror(errno));
        if (syscall(SYS_landlock_restrict_self, landlock, 0) != 0) die("cannot apply Landlock: %s", strerror(errno));
        close(landlock);
    }
    if (probe) return 0;
    execvp(argv[i], argv + i);
    fprintf(stderr, "hpc-confine: cannot run %s: %s\n", argv[i], strerror(errno));
    return errno == ENOENT ? 127 : 126;
}
