/* The release's program launcher. bin/hpc-daemond (and the other programs,
 * and libexec/dbus-daemon) are hard links to this one static executable. It
 * finds the release it belongs to from /proc/self/exe (so it works from any
 * directory and through symlinks), then runs the real program, lib/bin/NAME,
 * with the release's own dynamic loader and libraries:
 *
 *   lib/ld-linux-x86-64.so.2 --library-path lib --argv0 ARGV0 lib/bin/NAME ARGS
 *
 * so nothing is loaded from the host's C library, whatever its version.
 * --library-path does not reach the program's children (shells, jobs), which
 * keep the host's libraries. HPC_DAEMON_BUNDLE_DIR tells the programs where
 * the release is; where an installer made a stable "current" link next to
 * the versioned directory, that link is used, so paths written into unit and
 * activation files survive an upgrade. Static, so it needs no loader itself. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void fail(const char* what, const char* path) {
    fprintf(stderr, "hpc-daemon launcher: %s %s: %s\n", what, path, strerror(errno));
    exit(127);
}

/* Cuts the last path component off `path` and returns it. */
static char* cutLast(char* path) {
    char* slash = strrchr(path, '/');
    if (!slash || slash == path) {
        errno = EINVAL;
        fail("unexpected location", path);
    }
    *slash = '\0';
    return slash + 1;
}

int main(int argc, char** argv) {
    static char exe[PATH_MAX], root[PATH_MAX], loader[PATH_MAX], libdir[PATH_MAX], real[PATH_MAX];
    static char current[PATH_MAX], resolved[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) fail("cannot read", "/proc/self/exe (is /proc mounted?)");
    exe[n] = '\0';
    const char* name = cutLast(exe); /* exe is now ROOT/bin or ROOT/libexec */
    cutLast(exe);                    /* exe is now ROOT */
    if (snprintf(root, sizeof root, "%s", exe) >= (int)sizeof root ||
        snprintf(loader, sizeof loader, "%s/lib/ld-linux-x86-64.so.2", root) >= (int)sizeof loader ||
        snprintf(libdir, sizeof libdir, "%s/lib", root) >= (int)sizeof libdir ||
        snprintf(real, sizeof real, "%s/lib/bin/%s", root, name) >= (int)sizeof real) {
        errno = ENAMETOOLONG;
        fail("path too long:", root);
    }
    if (access(real, X_OK) != 0) fail("cannot run", real);

    /* PREFIX/lib/hpc-daemon/VERSION with PREFIX/lib/hpc-daemon/current -> VERSION. */
    const char* bundle = root;
    strcpy(current, root);
    cutLast(current);
    strncat(current, "/current", sizeof current - strlen(current) - 1);
    if (realpath(current, resolved) && strcmp(resolved, root) == 0) bundle = current;
    if (setenv("HPC_DAEMON_BUNDLE_DIR", bundle, 1) != 0) fail("cannot set", "HPC_DAEMON_BUNDLE_DIR");

    char** args = calloc((size_t)argc + 7, sizeof(char*));
    if (!args) fail("out of memory for", "arguments");
    int i = 0;
    args[i++] = loader;
    args[i++] = "--library-path";
    args[i++] = libdir;
    args[i++] = "--argv0";
    args[i++] = argc > 0 && argv[0] ? argv[0] : (char*)name;
    args[i++] = real;
    for (int a = 1; a < argc; ++a) args[i++] = argv[a];
    args[i] = NULL;
    execv(loader, args);
    fail("cannot run", loader);
    return 127;
}
