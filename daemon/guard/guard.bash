# hpc-daemon shell guard: ADVISORY checks of writes against the allowed
# directories, for interactive shells the daemon starts. They catch the
# common cases early with a clear message (rm, rmdir, mv, cp, mkdir, touch,
# tee, cd, pushd, popd and output redirections); they cannot stop a program
# that writes by itself (an interpreter, dd, ...). Where the kernel has
# Landlock, hpc-daemond also enforces the same directories on every process.
# Written by hpc-daemond for each profile; the user's own dotfiles are not
# edited: ~/.bashrc is read first, as bash would.
if [ -f "$HOME/.bashrc" ]; then . "$HOME/.bashrc"; fi

__hpc_allowed_dirs=(@ALLOWED_DIRS@)

__hpc_resolve() { realpath -m -- "$1" 2>/dev/null || printf '%s\n' "$1"; }

__hpc_inside() {
    local p d
    case $1 in /dev/null|/dev/zero|/dev/tty|/dev/stdout|/dev/stderr|/dev/fd/*|/proc/self/fd/*) return 0 ;; esac
    p=$(__hpc_resolve "$1")
    case $p in /dev/null|/dev/zero|/dev/tty|/dev/pts/*|/dev/shm/*) return 0 ;; esac
    if [ -n "$TMPDIR" ] && [[ $p == "$TMPDIR" || $p == "$TMPDIR"/* ]]; then return 0; fi
    for d in "${__hpc_allowed_dirs[@]}"; do
        [[ $p == "$d" || $p == "$d"/* ]] && return 0
    done
    return 1
}

__hpc_block() {
    local IFS=', '
    printf 'hpc-daemon: blocked %s: %s is outside the allowed directories (%s)\n' \
        "$1" "$(__hpc_resolve "$2")" "${__hpc_allowed_dirs[*]}" >&2
}

# __hpc_check ACTION PATH...: succeeds when every PATH is inside.
__hpc_check() {
    local action=$1 p
    shift
    for p in "$@"; do
        __hpc_inside "$p" || { __hpc_block "$action" "$p"; return 1; }
    done
}

# Operands (not options) of a command line, into __hpc_args.
__hpc_operands() {
    local a options=1
    __hpc_args=()
    for a in "$@"; do
        if ((options)) && [[ $a == -- ]]; then options=0
        elif ((options)) && [[ $a == -?* ]]; then :
        else __hpc_args+=("$a"); fi
    done
}

rm()    { __hpc_operands "$@"; __hpc_check rm "${__hpc_args[@]}" && command rm "$@"; }
rmdir() { __hpc_operands "$@"; __hpc_check rmdir "${__hpc_args[@]}" && command rmdir "$@"; }
mkdir() { __hpc_operands "$@"; __hpc_check mkdir "${__hpc_args[@]}" && command mkdir "$@"; }
touch() { __hpc_operands "$@"; __hpc_check touch "${__hpc_args[@]}" && command touch "$@"; }
tee()   { __hpc_operands "$@"; __hpc_check tee "${__hpc_args[@]}" && command tee "$@"; }
# mv writes its destination and removes its sources: all must be inside.
mv()    { __hpc_operands "$@"; __hpc_check mv "${__hpc_args[@]}" && command mv "$@"; }
# cp only writes its destination: the last operand, or -t/--target-directory.
cp() {
    local a next=0 target=
    for a in "$@"; do
        if ((next)); then target=$a; next=0
        elif [[ $a == -t ]]; then next=1
        elif [[ $a == --target-directory=* ]]; then target=${a#*=}
        fi
    done
    if [ -z "$target" ]; then
        __hpc_operands "$@"
        ((${#__hpc_args[@]})) && target=${__hpc_args[${#__hpc_args[@]}-1]}
    fi
    if [ -n "$target" ]; then __hpc_check cp "$target" || return 1; fi
    command cp "$@"
}
cd() {
    local t=${1-$HOME}
    [[ $t == - ]] && t=$OLDPWD
    __hpc_check cd "$t" && builtin cd "$@"
}
pushd() {
    if [ $# -gt 0 ] && [[ $1 != [-+]* ]]; then __hpc_check pushd "$1" || return 1; fi
    builtin pushd "$@"
}
popd() {
    if [ $# -eq 0 ] && [ -n "${DIRSTACK[1]}" ]; then
        local t=${DIRSTACK[1]}
        t=${t/#\~/$HOME}
        __hpc_check popd "$t" || return 1
    fi
    builtin popd "$@"
}

# One word of a command line starting at $2: sets __hpc_word (quotes removed,
# a leading ~ and $HOME expanded) and __hpc_end.
__hpc_scan_word() {
    local s=$1 i=$2 n=${#1} c q= w=
    while ((i < n)); do
        c=${s:i:1}
        if [ -n "$q" ]; then
            if [ "$c" = "$q" ]; then q=; else w+=$c; fi
        else
            case $c in
                \'|\") q=$c ;;
                \\) ((i++)); w+=${s:i:1} ;;
                ' '|$'\t'|';'|'|'|'&'|'<'|'>'|')') break ;;
                *) w+=$c ;;
            esac
        fi
        ((i++))
    done
    w=${w/#\~/$HOME}
    w=${w//'${HOME}'/$HOME}
    w=${w//'$HOME'/$HOME}
    __hpc_word=$w
    __hpc_end=$i
}

# The DEBUG trap: a simple command whose output redirection points outside
# is skipped (extdebug) after one line saying why.
__hpc_redirects() {
    local s=$BASH_COMMAND i=0 n c q=
    [[ $s == __hpc_* ]] && return 0
    n=${#s}
    while ((i < n)); do
        c=${s:i:1}
        if [ -n "$q" ]; then
            [ "$c" = "$q" ] && q=
        else
            case $c in
                \'|\") q=$c ;;
                \\) ((i++)) ;;
                '>')
                    ((i++))
                    [[ ${s:i:1} == '>' || ${s:i:1} == '|' ]] && ((i++))
                    if [[ ${s:i:1} == '&' ]]; then ((i++)); continue; fi  # >&N duplicates a descriptor
                    while [[ ${s:i:1} == ' ' ]]; do ((i++)); done
                    __hpc_scan_word "$s" "$i"
                    i=$__hpc_end
                    if [ -n "$__hpc_word" ] && ! __hpc_inside "$__hpc_word"; then
                        __hpc_block "redirection to" "$__hpc_word"
                        return 1
                    fi
                    continue ;;
            esac
        fi
        ((i++))
    done
    return 0
}
shopt -s extdebug
trap '__hpc_redirects' DEBUG

# The audit log: after each command line, its status, directory and text go
# to the daemon through the descriptor it gave this shell.
if [ -n "$HPC_AUDIT_FD" ]; then
    HISTCONTROL=
    __hpc_audit() {
        local rc=$? entry number
        entry=$(HISTTIMEFORMAT= builtin history 1)
        number=${entry%%[^0-9 ]*}
        number=${number// /}
        if [ -n "$__hpc_audit_last" ] && [ "$number" != "$__hpc_audit_last" ]; then
            entry=${entry#*[0-9]  }
            printf '%s\t%s\t%s\n' "$rc" "$PWD" "${entry//$'\n'/ }" >&"$HPC_AUDIT_FD"
        fi
        __hpc_audit_last=${number:-0}
        return $rc
    }
    PROMPT_COMMAND="__hpc_audit${PROMPT_COMMAND:+; $PROMPT_COMMAND}"
fi
