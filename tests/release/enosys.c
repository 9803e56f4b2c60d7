/* enosys: runs a command as on a Linux 4.18 kernel (RHEL 8): every system
 * call newer than 4.18 fails with ENOSYS, in the command and in everything it
 * starts (a seccomp filter is inherited across fork and exec).
 *
 *   enosys COMMAND [ARGS...]
 *   enosys --check      exits 0 when pidfd_open (434) fails with ENOSYS under the filter
 *
 * Linux 4.18's newest x86_64 system call is rseq (334); 335-423 are unused on
 * x86_64, and pidfd_open (434), clone3 (435), close_range (436),
 * faccessat2 (439) and the Landlock calls (444-446) all come after. */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FIRST_AFTER_4_18 335

static int install(void) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, FIRST_AFTER_4_18, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof filter / sizeof filter[0], .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: enosys COMMAND [ARGS...] | enosys --check\n");
        return 2;
    }
    if (install() != 0) {
        fprintf(stderr, "enosys: cannot install the seccomp filter: %s\n", strerror(errno));
        return 125;
    }
    if (strcmp(argv[1], "--check") == 0) {
        long r = syscall(434, (long)getpid(), 0L);
        if (r < 0 && errno == ENOSYS) return 0;
        fprintf(stderr, "enosys: pidfd_open returned %ld (%s) under the filter\n", r, r < 0 ? strerror(errno) : "ok");
        return 1;
    }
    execvp(argv[1], argv + 1);
    fprintf(stderr, "enosys: cannot run %s: %s\n", argv[1], strerror(errno));
    return 127;
}
